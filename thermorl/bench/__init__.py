"""`thermorl bench`: compare training methods (arms) over seeds, resumably (the command's help: command.py).

arms.py      the arms file: schema, checks, one run's plan
run.py       one run in its own process: train, score the policy; the warmed-up policy's scores
scheduler.py the runs not finished yet, one core each, --jobs at once
report.py    the report from the runs' JSONs: intervals, pass@1 by temperature, paired comparisons, grid
stats.py     intervals over seeds, the paired sign-flip test, Holm over a declared family, the prompt bootstrap
plot.py      the figure
command.py   the command line
"""
