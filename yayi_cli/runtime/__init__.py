"""Services every layer may use: errors and exit codes, atomic writes, child processes, the terminal,
optional packages, a model's files in a folder or the Hugging Face cache. It imports nothing else of yayi."""
