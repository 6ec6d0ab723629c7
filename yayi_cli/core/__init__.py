"""The prompt-format core and the records it renders: templates, record shapes, reading and checking record
files, seeded sampling, preference pairs as token ids. It imports only runtime/."""
