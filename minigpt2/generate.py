"""Entry point of `python -m minigpt2.generate`; the command lives in the application (`app.generate`), the
sampler in `minigpt2.generation`."""

from app.generate import main

if __name__ == "__main__":
    main()
