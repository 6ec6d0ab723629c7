"""`yayi train`: options -> ZeRO config + run manifest -> the `deepspeed` launcher -> one worker per rank.

options.py resolves what the user asked for (defaults < config file < flags), zero.py writes the
DeepSpeed config, launch.py plans and runs the launcher, memory.py estimates memory needs,
dataset.py turns records into (optionally packed) training examples, and worker.py trains on
each rank with the Hugging Face Trainer.
"""
