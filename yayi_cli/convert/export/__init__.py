"""`yayi export`: a YaYi model as one GGUF file for llama.cpp and what runs on it (Ollama, LM Studio).

The file is written in Python with the `gguf` package (llama.cpp's own GGUF library): `layouts` knows
what each architecture's tensors and hyperparameters become, `vocab` puts the tokenizer and the YaYi
format (markers as control tokens, `<|End|>` as end of turn, the chat template) into the metadata,
`gguf_file` streams the tensors into the file, `llama_quantizer` hands the k-quants to llama.cpp,
`ollama` writes the Modelfile, and `command` orders it all.
"""
