"""`yayi train`: options -> a launch plan -> the `deepspeed` launcher -> one worker per rank.

The launcher side: options.py resolves what the user asked for (defaults < config file < flags);
plan.py turns it into an immutable plan (ranks.py: where the ranks run; checkpoints.py: what to resume;
environment.py: what every rank's environment holds; zero.py: the DeepSpeed config; memory.py and
adapters.py: what it costs); launch.py writes the run files and runs the plan (supervise.py: the
launcher's process group; console.py: what it shows; report.py: the plan as shown). The rank side:
worker.py runs the recipe of the run's method (recipe.py: the steps every method shares; sft.py and
preference.py: one recipe class per method; dataset.py: the examples; progress.py: what it reports).
models/run_files.py names the files both sides share; runs.py keeps every launch's record.
"""
