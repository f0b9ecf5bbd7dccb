module minicpmv-gguf/tests/ollama_template

go 1.19
