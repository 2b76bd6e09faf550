"""The perfect-sonnet check: 14 non-empty lines rhyming ABAB CDCD EFEF GG.

Two end words rhyme when some pair of their CMU pronunciations (`pronouncing`) has the same *rhyming part*:
the phones from the last stressed vowel to the end, stress digits dropped ("decease" S IY1 S / "increase"
K R IY1 S -> "IY S"). Every listed pronunciation is tried, so "wind" (W IH1 N D / W AY1 N D) rhymes with both
"sinned" and "kind". Identical end words count as rhyming.

Words the dictionary lacks go through, in order:
1. archaic spellings: "o'er" -> "ore", "e'er"/"ne'er" -> "air", "ta'en" -> "lane", ...;
2. elided endings: "lov'd" -> "loved" / "love" + D, "mak'st" -> "make" + S T, "grow'st" -> "grow" + S T;
3. a prefix dropped, for the rhyme only (it still counts syllables): "o'erworn" -> "worn", "unbred" -> "bred";
4. an orthographic fallback: if a word is still unknown, the pair is judged on spelling, comparing the tails
   from the last vowel group, a final silent e dropped, "-ed" read as "d", doubled consonants single
   ("niggarding" ~ "spring": "ing"; "stelled" ~ "held": "eld"); such words are reported as unknown. Only a
   *word-like* token gets this fallback (`word_like`: letters only, in lower case, capitalised or all capitals;
   a vowel to rhyme on; at most 12 letters and 4 vowel groups); any other unknown end word, such as random
   GPT-2 tokens glued together ("RoyalsHel109", "CETinder") or a vowel-less fragment ("pt"), rhymes with nothing.
CMU's two spellings of fire-words ("desire" AY1 ER0, "admire" AY1 R) are treated as one, and so are its two of the
vowel before R in "near" ("here" HH IY1 R, "near" N IH1 R: "here" / "uprear" rhyme in Sonnet 49).

The meter check (optional, reported separately) counts syllables per line and calls a line metrical when it has
9-11 syllables (10, allowing a feminine ending or an elision). The count (`distill.syllables`, its rules in that
module's docstring) reads every part of a hyphenated word, CMU's shortest reading of each word, the period's
written elisions ("th'" 0, "o'erworn" 2, "lov'd" 1) and words CMU lacks by their known parts, keeping their
prefixes ("overplus" 3), else by vowel groups. 1815 of Shakespeare's 1833 lines in the course's sonnets.txt pass;
the 18 that do not are 12-13 syllables as written, pentameters only with a word slurred ("heav'nly", "pow'r").

Reads the course's sonnet files (a header, then each sonnet as its number, a blank line and its lines; CRLF),
plain text with sonnets separated by blank lines, and JSONL with a "text" field (records marked
"status": "rejected" by `distill.generate` are skipped).

    python -m distill.check sonnets.txt [--meter] [--json report.json] [--show N]
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pronouncing

from course.sonnets import is_number_line, parse_sonnets
from distill.records import SyntheticFileError, decode_text, read_file_bytes, read_jsonl
from distill.syllables import count_line, vowel_groups
from minigpt2.atomic import atomic_write_json
from minigpt2.errors import UserError, exits_on_user_error

SCHEME = "ABABCDCDEFEFGG"
METER_SYLLABLES = (9, 11)  # a pentameter line: 10 syllables, allowing a feminine ending or an elision
# (line a, line b) index pairs that must rhyme, 0-based, derived from SCHEME.
RHYME_PAIRS = [(i, j) for i in range(14) for j in range(i + 1, 14) if SCHEME[i] == SCHEME[j]]

# Archaic contractions whose rhyme sound is that of a modern word.
ARCHAIC = {
    "o'er": "ore", "e'er": "air", "ne'er": "air", "where'er": "air", "whate'er": "air", "whene'er": "air",
    "howe'er": "air", "whoe'er": "air", "e'en": "seen", "ta'en": "lane", "ope": "hope", "oft": "soft",
    "i'": "eye", "th'": "the",
}
PREFIXES = ("o'er", "over", "under", "out", "fore", "for", "mis", "dis", "un", "re", "be", "in", "en", "up")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_WORD = re.compile(r"[a-z][a-z']*")
_VOWEL_GROUP = re.compile(r"[aeiouy]+")
_EDGE_PUNCTUATION = re.compile(r"^[^\w']+|[^\w']+$")
_PLAIN_TOKEN = re.compile(r"'?[A-Za-z]+(?:['-][A-Za-z]+)*'?")
MAX_UNKNOWN_LETTERS, MAX_UNKNOWN_GROUPS = 12, 4  # the spelling fallback's limits (`word_like`)


def _strip_stress(phones: list[str]) -> str:
    return " ".join(p.rstrip("012") for p in phones)


def rhyming_part(phones: str) -> str:
    """Phones from the last stressed vowel (else the last vowel) to the end, without stress digits."""
    ph = phones.split()
    vowels = [i for i, p in enumerate(ph) if p[-1].isdigit()]
    stressed = [i for i in vowels if ph[i][-1] in "12"]
    start = stressed[-1] if stressed else (vowels[-1] if vowels else 0)
    part = _strip_stress(ph[start:])
    # CMU spells fire-words two ways ("desire" AY1 ER0, "admire" AY1 R): make them one.
    part = re.sub(r"\b(AY|AW|OY|IY|EY|UW) ER\b", r"\1 R", part)
    # and the vowel of "near" two ways ("here", "ear", "disappear" IY1 R; "near", "year", "appear" IH1 R): one too.
    return re.sub(r"\bIY R\b", "IH R", part)


def normalize_word(token: str) -> str:
    """Lower-case a token, unify apostrophes, drop surrounding punctuation (keeping inner/final elisions)."""
    token = token.translate(_APOSTROPHES).lower()
    m = _WORD.findall(token)
    if not m:
        return ""
    word = m[-1]
    # A trailing apostrophe is a possessive plural ("lovers'") except in elisions like "i'" and "th'".
    if word.endswith("'") and word not in ARCHAIC:
        word = word.rstrip("'")
    return word


def end_token(line: str) -> str:
    """The line's last token that holds a word, as written, without the punctuation around it ("thee.--" ->
    "thee", "RoyalsHel109," -> "RoyalsHel109"); "" when no token holds a word."""
    for token in reversed(line.split()):
        if normalize_word(token):
            return _EDGE_PUNCTUATION.sub("", token.translate(_APOSTROPHES))
    return ""


def end_word(line: str) -> str:
    """The line's last word, normalised ("thee.--" -> "thee", "o'er," -> "o'er")."""
    return normalize_word(end_token(line))


def pronunciations(word: str) -> list[str]:
    """CMU pronunciations of a word, handling archaic spellings and elided endings; [] if unknown."""
    if not word:
        return []
    if word in ARCHAIC:
        return pronouncing.phones_for_word(ARCHAIC[word])
    found = pronouncing.phones_for_word(word)
    if found:
        return found
    # Elided endings: every reading is kept ("mak'st": "mak" is also a CMU name, "make" the verb). They come
    # before the word without its apostrophes, which would read "hear'st" as "Hearst" and "be'st" as "best".
    for ending, extra in (("'d", "D"), ("'st", "S T"), ("st", "S T")):
        if word.endswith(ending) and len(word) > len(ending) + 1:
            stem = word[: -len(ending)]
            found = []
            if ending == "'d":
                found += pronouncing.phones_for_word(stem + "ed") + pronouncing.phones_for_word(stem + "d")
            found += [f"{p} {extra}" for p in
                      pronouncing.phones_for_word(stem) + pronouncing.phones_for_word(stem + "e")]
            if found:
                return list(dict.fromkeys(found))
    # Other apostrophes: a possessive ("soul's" as "souls") or an inner elision ("wat'ry" as "watry").
    plain = word.replace("'", "")
    if plain != word and pronouncing.phones_for_word(plain):
        return pronouncing.phones_for_word(plain)
    # A prefix does not change where a word rhymes: "o'erworn" ~ "worn", "unbred" ~ "bred", "recured" ~ "cured".
    for prefix in PREFIXES:
        rest = word[len(prefix):]
        if word.startswith(prefix) and len(rest) >= 3:
            found = pronunciations(rest)
            if found:
                return found
    return []


def spelling_tail(word: str) -> str:
    """Orthographic rhyme key for unknown words: the last vowel group and what follows ("decease" -> "eas")."""
    w = re.sub(r"[^a-z]", "", word).replace("qu", "kw")  # the u of "qu" is no vowel
    if len(w) > 3 and w.endswith("ed") and _VOWEL_GROUP.search(w[:-2]):
        w = w[:-2] + "d"  # mostly elided in verse: "stelled" ~ "held"
    elif len(w) > 2 and w.endswith("e") and w[-2] not in "aeiouy":
        w = w[:-1]  # silent final e
    w = re.sub(r"([b-df-hj-np-tv-z])\1", r"\1", w)  # doubled consonants sound single
    groups = list(_VOWEL_GROUP.finditer(w))
    return w[groups[-1].start():] if groups else w


def word_like(token: str) -> bool:
    """May an end word CMU lacks rhyme by its spelling? Only when it looks like one English word:

    - the token is letters, with apostrophes or hyphens only between them, in lower case, capitalised or all
      capitals (so no digits, symbols, other scripts or glued GPT-2 tokens: "RoyalsHel109", "worthyBind",
      "CETinder");
    - its spelling tail starts with a vowel ("pt", "ske" -> "sk" have no vowel to rhyme on);
    - it has at most MAX_UNKNOWN_LETTERS letters and MAX_UNKNOWN_GROUPS vowel groups (longer strings are tokens
      glued together: "teeonomicomedicalotton"; the longest word in the sonnets that CMU lacks, "prefiguring",
      has 11 and 4).
    """
    token = token.translate(_APOSTROPHES)
    last = token.split("-")[-1]  # the end word of "self-love" is "love"
    if not _PLAIN_TOKEN.fullmatch(token) or not (last[1:] == last[1:].lower() or last == last.upper()):
        return False
    word = normalize_word(token)
    letters = word.replace("'", "")
    return (bool(re.match(r"[aeiouy]", spelling_tail(word))) and len(letters) <= MAX_UNKNOWN_LETTERS
            and vowel_groups(letters) <= MAX_UNKNOWN_GROUPS)


def rhyme(a: str, b: str) -> tuple[bool, str]:
    """Do end words `a` and `b` (as written, or normalised) rhyme? Returns (verdict, how): how is "cmu",
    "identical", "spelling" (a word CMU lacks, judged on spelling) or "not word-like" (a word CMU lacks that
    is no word: it rhymes with nothing)."""
    wa, wb = normalize_word(a), normalize_word(b)
    pa, pb = pronunciations(wa), pronunciations(wb)
    unlike = [t for t, p in ((a, pa), (b, pb)) if not p and not word_like(t)]
    if unlike or not (wa and wb):
        return False, "not word-like"
    if wa == wb:
        return True, "identical"
    if pa and pb:
        return bool({rhyming_part(p) for p in pa} & {rhyming_part(p) for p in pb}), "cmu"
    return spelling_tail(wa) == spelling_tail(wb), "spelling"


def _ends_unstressed(phones: str) -> bool:
    vowels = [p for p in phones.split() if p[-1].isdigit()]
    return len(vowels) > 1 and vowels[-1][-1] == "0"


def _last_syllable(phones: str) -> str:
    ph = phones.split()
    last = max((i for i, p in enumerate(ph) if p[-1].isdigit()), default=0)
    return _strip_stress(ph[last:])


def _describe_pair(token_a: str, token_b: str) -> str:
    """Why two end words (as written) fail, in three kinds: only unstressed last syllables match ("weak rhyme"),
    the rhyme falls on an unstressed syllable of one word ("unstressed"), or the rhyme sounds differ ("different
    sounds", e.g. Shakespeare's eye rhymes and Early Modern pronunciations); or a word CMU lacks is no word."""
    a, b = normalize_word(token_a), normalize_word(token_b)
    pa, pb = pronunciations(a), pronunciations(b)
    unlike = [t for t, p in ((token_a, pa), (token_b, pb)) if not p and not word_like(t)]
    if unlike:
        return f"'{a}' / '{b}' no rhyme: '{unlike[0]}' is unknown to CMU and not word-like"
    if not (pa and pb):
        return f"'{a}' / '{b}' differ in spelling ({spelling_tail(a)} / {spelling_tail(b)}; word unknown to CMU)"
    parts = f"{'|'.join(sorted({rhyming_part(p) for p in pa}))} / {'|'.join(sorted({rhyming_part(p) for p in pb}))}"
    if {_last_syllable(p) for p in pa} & {_last_syllable(p) for p in pb}:
        return f"'{a}' / '{b}' weak rhyme, only the unstressed last syllables match ({parts})"
    unstressed = [w for w, ps in ((a, pa), (b, pb)) if all(_ends_unstressed(p) for p in ps)]
    if len(unstressed) == 1:
        return f"'{a}' / '{b}' unstressed: the rhyme falls on an unstressed syllable of '{unstressed[0]}' ({parts})"
    return f"'{a}' / '{b}' different sounds ({parts})"


def count_syllables(line: str) -> int:
    """Syllables in a line: CMU counts, known parts and the period's elisions (`distill.syllables`)."""
    return count_line(line)


@dataclass
class SonnetCheck:
    """The verdict for one sonnet: `perfect`, and if not, `reasons` in words."""

    name: str
    n_lines: int
    perfect: bool
    reasons: list[str] = field(default_factory=list)
    unknown_words: list[str] = field(default_factory=list)
    failed_pairs: list[tuple[int, int, str, str]] = field(default_factory=list)  # 1-based lines + words
    syllables: list[int] = field(default_factory=list)

    @property
    def metrical_lines(self) -> int:
        return sum(METER_SYLLABLES[0] <= s <= METER_SYLLABLES[1] for s in self.syllables)


def sonnet_lines(text: str) -> list[str]:
    """The non-empty lines of a sonnet, stripped; a line ends at LF, CRLF or a lone CR (as the file readers read)."""
    return [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if ln.strip()]


def check_sonnet(text: str, name: str = "sonnet", meter: bool = False) -> SonnetCheck:
    """Check one sonnet: exactly 14 non-empty lines and every ABAB CDCD EFEF GG pair rhyming."""
    lines = sonnet_lines(text)
    result = SonnetCheck(name=name, n_lines=len(lines), perfect=False)
    if meter:
        result.syllables = [count_syllables(ln) for ln in lines]
    tokens = [end_token(ln) for ln in lines]
    words = [normalize_word(t) for t in tokens]
    result.unknown_words = sorted({w for w in words if w and not pronunciations(w)})
    if len(lines) != 14:
        result.reasons.append(f"{len(lines)} lines, expected 14")
        return result
    for i, j in RHYME_PAIRS:
        ok, _ = rhyme(tokens[i], tokens[j])
        if not ok:
            result.failed_pairs.append((i + 1, j + 1, words[i], words[j]))
            result.reasons.append(f"lines {i + 1}/{j + 1} ({SCHEME[i]}): {_describe_pair(tokens[i], tokens[j])}")
    result.perfect = not result.failed_pairs
    return result


def is_perfect(text: str) -> bool:
    """True when `text` is a perfect Shakespearean sonnet by this module's check."""
    return check_sonnet(text).perfect


FORM_PARTS = ("fourteen_lines", "rhyme_scheme", "meter", "perfect")


def form_of(text: str) -> dict[str, bool]:
    """The form of one sonnet, part by part, so that a model's output can be judged on each alone:

    fourteen_lines  exactly 14 non-empty lines
    rhyme_scheme    every ABAB CDCD EFEF GG pair among the lines present rhymes (a sonnet cut short is judged
                    on the lines it has; fewer than 4 lines, which hold no complete pair past the first, fail)
    meter           every line has 9-11 syllables
    perfect         `check_sonnet`'s verdict: 14 lines and the whole rhyme scheme
    """
    lines = sonnet_lines(text)
    words = [end_token(ln) for ln in lines]
    pairs = [(i, j) for i, j in RHYME_PAIRS if j < len(lines)]
    low, high = METER_SYLLABLES
    return {"fourteen_lines": len(lines) == 14,
            "rhyme_scheme": len(lines) >= 4 and all(rhyme(words[i], words[j])[0] for i, j in pairs),
            "meter": bool(lines) and all(low <= count_syllables(ln) <= high for ln in lines),
            "perfect": check_sonnet(text).perfect}


# ---------------------------------------------------------------------------------------------------------
# Reading sonnet files

def read_sonnet_texts(path: str | Path) -> list[tuple[str, str]]:
    """(name, text) of each sonnet in a file of any layout the checker accepts: the course's numbered layout
    (parsed by `course.sonnets.parse_sonnets`), blank-line separated plain text, or JSONL.

    An unreadable or malformed file is a `SyntheticFileError` (a `UserError`) saying what is wrong.
    """
    path = Path(path)
    raw = decode_text(path, read_file_bytes(path, "sonnet"))
    if path.suffix == ".jsonl":
        return _read_jsonl(path, raw)
    lines = raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if any(is_number_line(ln) for ln in lines):
        # the checker reads words and line ends only: indentation and empty entries are dropped
        sonnets = [(str(s.number), "\n".join(ln.strip() for ln in s.lines)) for s in parse_sonnets(raw) if s.lines]
    else:
        sonnets = _read_blocks(lines)
    if not sonnets:
        raise SyntheticFileError(f"{path}: no sonnets found (expected numbered sonnets, blank-line separated text "
                                 "or JSONL)")
    return sonnets


def _read_blocks(lines: list[str]) -> list[tuple[str, str]]:
    blocks: list[list[str]] = [[]]
    for ln in lines:
        if ln.strip():
            blocks[-1].append(ln.strip())
        elif blocks[-1]:
            blocks.append([])
    return [(str(k + 1), "\n".join(b)) for k, b in enumerate(b for b in blocks if b)]


def _read_jsonl(path: Path, raw: str) -> list[tuple[str, str]]:
    return [(str(rec.get("id", lineno)), rec["text"]) for lineno, rec in read_jsonl(path, raw)
            if rec.get("status", "kept") != "rejected"]


# ---------------------------------------------------------------------------------------------------------
# Report


def check_file(path: str | Path, meter: bool = False) -> list[SonnetCheck]:
    """Check every sonnet in a file."""
    return [check_sonnet(text, name, meter=meter) for name, text in read_sonnet_texts(path)]


def summarize_checks(results: list[SonnetCheck], meter: bool = False) -> dict:
    """Counts for a report: perfect rate, failure kinds, unknown words, meter."""
    n = len(results)
    perfect = sum(r.perfect for r in results)
    summary = {
        "sonnets": n,
        "perfect": perfect,
        "perfect_rate": perfect / n if n else 0.0,
        "wrong_line_count": sum(r.n_lines != 14 for r in results),
        "rhyme_failures": sum(bool(r.failed_pairs) for r in results),
        "unknown_words": sorted({w for r in results for w in r.unknown_words}),
    }
    if meter:
        lines = [s for r in results for s in r.syllables]
        summary["meter_line_rate"] = sum(9 <= s <= 11 for s in lines) / len(lines) if lines else 0.0
        summary["meter_sonnet_rate"] = sum(r.metrical_lines == r.n_lines for r in results) / n if n else 0.0
    return summary


def format_report(results: list[SonnetCheck], meter: bool = False, show: int | None = None) -> str:
    """Human-readable report: the perfect rate, then why each failing sonnet failed."""
    s = summarize_checks(results, meter)
    out = [f"perfect: {s['perfect']}/{s['sonnets']} ({100 * s['perfect_rate']:.1f}%)",
           f"  wrong line count: {s['wrong_line_count']}, rhyme failures: {s['rhyme_failures']}"]
    if s["unknown_words"]:
        out.append(f"  end words unknown to CMU (spelling fallback): {', '.join(s['unknown_words'])}")
    if meter:
        out.append(f"meter (9-11 syllables): {100 * s['meter_line_rate']:.1f}% of lines, "
                   f"{100 * s['meter_sonnet_rate']:.1f}% of sonnets with every line in range")
    failing = [r for r in results if not r.perfect]
    for r in failing[:show] if show is not None else failing:
        unknown = f" [unknown: {', '.join(r.unknown_words)}]" if r.unknown_words else ""
        out.append(f"{r.name}: " + "; ".join(r.reasons) + unknown)
    if show is not None and len(failing) > show:
        out.append(f"... and {len(failing) - show} more failing sonnets")
    return "\n".join(out)


@exits_on_user_error
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check sonnets for 14 lines and the ABAB CDCD EFEF GG rhyme scheme.")
    p.add_argument("file", help="sonnet file: course format (numbered), blank-line separated text, or .jsonl")
    p.add_argument("--meter", action="store_true", help="also report syllable counts (9-11 per line)")
    p.add_argument("--json", metavar="PATH", help="write the summary and per-sonnet verdicts as JSON here")
    p.add_argument("--show", type=int, default=None, help="list at most this many failing sonnets")
    args = p.parse_args(argv)
    if args.show is not None and args.show < 0:
        raise UserError(f"--show must be >= 0, got {args.show}")
    results = check_file(args.file, meter=args.meter)
    print(format_report(results, meter=args.meter, show=args.show))
    if args.json:
        payload = {"summary": summarize_checks(results, args.meter),
                   "sonnets": [{"name": r.name, "perfect": r.perfect, "reasons": r.reasons,
                                "unknown_words": r.unknown_words, "syllables": r.syllables} for r in results]}
        try:
            atomic_write_json(args.json, payload)
        except OSError as e:
            raise UserError(f"--json {args.json}: cannot write it ({e.strerror or e})") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
