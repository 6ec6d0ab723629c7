"""Models and what runs them: what --model names, tokenizers, weights at a device and precision, load_for_task,
batched inference, the files a training run leaves, tiny offline models. It imports core/ and runtime/."""
