"""Entry point of `python -m quant.gguf`; the command lives in the application (`app.gguf`), which knows run
folders and presets, the file format in `quant.gguf`."""

if __name__ == "__main__":
    from app.gguf import main

    main()
