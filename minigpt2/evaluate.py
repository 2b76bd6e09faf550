"""Entry point of `python -m minigpt2.evaluate`; the command lives in the application (`app.evaluate`)."""

from app.evaluate import main

if __name__ == "__main__":
    main()
