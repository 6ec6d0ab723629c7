"""`yayi eval --benchmark`: C-Eval, CMMLU and MMLU from their files, with lm-evaluation-harness's numbers.

subjects (the benchmarks as data) -> files (reading the layouts) -> plan (what a run scores, checked
before a model loads) -> protocols (prompt text and token ids) -> scoring (log-likelihoods, fast) ->
run (subject by subject) -> report (the two means, categories, the C-Eval submission).
"""
