import cProfile, pstats, io
from test_evaluate import *  # noqa

def test_prof(domain_run, tmp_path):
    from skill.evaluate import evaluate
    run = make_run(tmp_path, domain_run, student=domain_run["sharp"], teacher=domain_run["teacher"])
    pr = cProfile.Profile(); pr.enable()
    evaluate(run, EvaluateConfig(resamples=1000))
    pr.disable()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(35); print(s.getvalue()[:7000])
