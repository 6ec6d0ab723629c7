"""`yayi chat`: `session` (the engine, no terminal), `repl` (the terminal), `batch` (pipes and JSON lines)."""
