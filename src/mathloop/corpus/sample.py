"""A small labelled web corpus, made on the spot, so the whole pipeline runs offline (tests, CI, a first try).

It holds the kinds of page the pipeline must tell apart:

  math              lesson and worked-example pages (algebra, fractions, percentages, geometry, probability,
                    calculus), on math-site domains
  other             recipes, travel notes, match reports, product reviews, gardening and history pages (with
                    numbers in them: prices, scores, years, so "has digits" is not "is math")
  repost            a math page copied to another site under a header of its own (a near-duplicate that MinHash
                    deduplication removes)
  benchmark_quote   a forum post that quotes a benchmark test problem verbatim (decontamination removes it)

Every document has `metadata["label"]` ("math" or "other": what a perfect classifier keeps; reposts and quotes
are math) and `metadata["kind"]`, so a run on it can be scored. `write_sample_corpus` writes the same documents
as JSONL, Parquet and a WET file (the three file readers), split into a labelled held-out part for the classifier's
precision and recall.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

MATH_DOMAINS = ("mathhelp.example", "algebra-notes.example", "calc-tutor.example", "numberlab.example")
OTHER_DOMAINS = ("dailyrecipes.example", "travelblog.example", "sportsdesk.example", "gadgetreview.example",
                 "gardenweekly.example", "historyhub.example")
REPOST_DOMAINS = ("copycat-study.example", "homeworkmirror.example")
FORUM_DOMAIN = "homeworkforum.example"

NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mo", "Nia")


def _linear(r: random.Random) -> str:
    a, x, b = r.randint(2, 9), r.randint(2, 15), r.randint(1, 30)
    c = a * x + b
    return (f"Solving linear equations. Solve for $x$: ${a}x + {b} = {c}$. Subtract {b} from both sides to get "
            f"${a}x = {c - b}$. Divide both sides by {a}, so $x = {x}$. Check: ${a} \\cdot {x} + {b} = {c}$, which "
            f"is true. In general, to solve $ax + b = c$ isolate the variable term first and then divide by the "
            f"coefficient $a$. Practice: solve ${a + 1}y - {b} = {(a + 1) * x - b}$. Answer: $y = {x}$.")


def _fractions(r: random.Random) -> str:
    a, b, c, d = r.randint(1, 5), r.randint(6, 9), r.randint(1, 5), r.randint(6, 9)
    return (f"Adding fractions with unlike denominators. To compute $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$, "
            f"find a common denominator, here ${b} \\times {d} = {b * d}$. Rewrite each fraction: "
            f"$\\frac{{{a * d}}}{{{b * d}}} + \\frac{{{c * b}}}{{{b * d}}} = \\frac{{{a * d + c * b}}}{{{b * d}}}$. "
            f"Then simplify the fraction by dividing numerator and denominator by their greatest common divisor. "
            f"Remember that the least common multiple gives the smallest common denominator.")


def _percent(r: random.Random) -> str:
    price, pct = r.randint(20, 200), r.choice((10, 15, 20, 25, 30, 40))
    off = price * pct / 100
    return (f"Percent problems, worked example. A jacket costs ${price} dollars and is discounted by {pct}%. "
            f"The discount is ${pct}\\% \\times {price} = {off:g}$ dollars, so the sale price is "
            f"${price} - {off:g} = {price - off:g}$ dollars. To find what percent one number is of another, divide "
            f"the part by the whole and multiply by 100. Exercise: what is {pct}% of {price * 2}? Solution: "
            f"${pct / 100:g} \\times {price * 2} = {off * 2:g}$.")


def _geometry(r: random.Random) -> str:
    w, h, rad = r.randint(3, 20), r.randint(3, 20), r.randint(2, 12)
    return (f"Area and perimeter. A rectangle with width {w} cm and height {h} cm has area $A = {w} \\times {h} = "
            f"{w * h}$ square centimetres and perimeter $P = 2({w} + {h}) = {2 * (w + h)}$ cm. A circle of radius "
            f"{rad} has area $\\pi r^2 = {rad * rad}\\pi$ and circumference $2\\pi r = {2 * rad}\\pi$. By the "
            f"Pythagorean theorem, a right triangle with legs {w} and {h} has hypotenuse $\\sqrt{{{w * w + h * h}}}$.")


def _probability(r: random.Random) -> str:
    red, blue = r.randint(2, 9), r.randint(2, 9)
    return (f"Probability basics. A bag holds {red} red marbles and {blue} blue marbles. The probability of drawing "
            f"a red marble is $\\frac{{{red}}}{{{red + blue}}}$. Drawing two marbles without replacement, the "
            f"probability that both are red is $\\frac{{{red}}}{{{red + blue}}} \\cdot \\frac{{{red - 1}}}"
            f"{{{red + blue - 1}}}$. The number of ways to choose 2 marbles from {red + blue} is "
            f"$\\binom{{{red + blue}}}{{2}} = {(red + blue) * (red + blue - 1) // 2}$. Expected value and variance "
            f"follow from the distribution.")


def _calculus(r: random.Random) -> str:
    a, n = r.randint(2, 9), r.randint(2, 6)
    return (f"Derivatives with the power rule. Let $f(x) = {a}x^{n}$. Then $f'(x) = {a * n}x^{n - 1}$. The power "
            f"rule says $\\frac{{d}}{{dx}} x^n = n x^{{n-1}}$. For the integral, $\\int {a}x^{n}\\,dx = "
            f"\\frac{{{a}}}{{{n + 1}}}x^{n + 1} + C$. Find the slope of the tangent line at $x = 1$: "
            f"$f'(1) = {a * n}$. The limit definition of the derivative gives the same result.")


MATH_TEMPLATES = (_linear, _fractions, _percent, _geometry, _probability, _calculus)


def _recipe(r: random.Random) -> str:
    grams, minutes, deg = r.randint(100, 500), r.randint(15, 60), r.choice((180, 200, 220))
    dish = r.choice(("banana bread", "lentil soup", "apple pie", "vegetable curry", "lemon cake"))
    return (f"My favourite {dish} recipe. You will need {grams} g of flour, two eggs, a pinch of salt and a cup of "
            f"milk. Preheat the oven to {deg} degrees. Mix the dry ingredients, whisk in the eggs and milk, and "
            f"bake for {minutes} minutes until golden. Serve warm with a spoon of yoghurt. My grandmother always "
            f"added cinnamon, and the kitchen smelled wonderful all afternoon.")


def _travel(r: random.Random) -> str:
    days, city = r.randint(2, 14), r.choice(("Lisbon", "Kyoto", "Oaxaca", "Tallinn", "Marrakesh", "Hobart"))
    return (f"{days} days in {city}. We arrived by train early in the morning and walked through the old town, "
            f"past the market stalls and the harbour. The hostel cost {r.randint(20, 80)} euros a night and the "
            f"staff were friendly. Highlights: the castle at sunset, street food near the station, and a boat "
            f"trip along the coast. Pack light shoes and a raincoat; the weather changes quickly.")


def _sports(r: random.Random) -> str:
    home, away = r.randint(0, 5), r.randint(0, 5)
    team = r.choice(("United", "Rovers", "Athletic", "City", "Wanderers"))
    return (f"Match report: {team} {home}, visitors {away}. A crowd of {r.randint(5, 60)} thousand saw the home "
            f"side press high from the first whistle. The striker scored in the {r.randint(1, 90)}th minute after a "
            f"quick counter attack, and the goalkeeper made two fine saves before half time. The coach praised the "
            f"defence and said the squad will rest before the cup tie next weekend.")


def _review(r: random.Random) -> str:
    price, hours = r.randint(30, 900), r.randint(5, 40)
    item = r.choice(("wireless headphones", "a budget laptop", "a smart watch", "an espresso machine"))
    return (f"Review of {item}. I paid {price} dollars and have used it every day for a month. Battery life is "
            f"about {hours} hours, the build feels solid, and setup took only a few minutes. The companion app is "
            f"clumsy and the manual is thin. Overall I would recommend it to friends, four stars out of five.")


def _garden(r: random.Random) -> str:
    plant = r.choice(("tomatoes", "roses", "basil", "potatoes", "sunflowers"))
    return (f"Growing {plant} at home. Choose a sunny spot and loosen the soil with a fork. Water deeply once a "
            f"week rather than a little every day, and add compost in spring. Watch for slugs after rain; a ring "
            f"of crushed shells helps. Last summer my neighbour harvested {r.randint(3, 40)} kilos from a small "
            f"patch, and the bees loved the flowers.")


def _history(r: random.Random) -> str:
    year = r.randint(1200, 1950)
    return (f"A short history of the old bridge. Built in {year} by local masons, it replaced a wooden crossing "
            f"that floods had destroyed. Merchants paid a toll to cross, and a chapel stood at its centre for "
            f"pilgrims. During the war of {year + r.randint(20, 200)} two arches were damaged and later rebuilt. "
            f"Today it is a protected monument and a favourite place for evening walks.")


OTHER_TEMPLATES = (_recipe, _travel, _sports, _review, _garden, _history)


def _repost(r: random.Random, text: str) -> str:
    """The page copied to another site under a header of its own, as scrapers and mirrors do."""
    return f"{r.choice(('Reposted for our students.', 'Mirror of a lesson page.', 'Shared by a reader:'))} {text}"


def _quote(r: random.Random, question: str) -> str:
    name = r.choice(NAMES)
    return (f"Homework help thread, posted by {name}. I am stuck on this one from my worksheet: {question} "
            f"I tried to set up an equation but my answer does not match the book. Can anyone explain the steps? "
            f"Reply: start by writing down what each quantity is and work step by step.")


MATH_OPENERS = ("Today's notes from class.", "Study guide for the unit test.", "Worked examples, part {n}.",
                "From the tutoring archive:", "Quick review before the exam.", "Lecture {n} summary.")
OTHER_OPENERS = ("Posted on Sunday.", "From the weekend edition.", "A note from our editor, issue {n}.",
                 "Reader mail:", "Archive post {n}.", "Field notes.")


def _sentences(text: str) -> list[str]:
    import re

    return re.split(r"(?<=[.?!:])\s+(?=[A-Z$])", text)


def _page(r: random.Random, templates, openers, i: int) -> str:
    """An opener and three sentences from each of two topics, the first topic cycling with `i`: pages of one site
    share a style and some sentences, as a real site's pages do, without being near-duplicates of each other."""
    first = templates[i % len(templates)]
    second = r.choice([t for t in templates if t is not first])
    parts = [r.choice(openers).format(n=r.randint(1, 40))]
    for template in (first, second):
        sentences = _sentences(template(r))
        keep = sorted(r.sample(range(len(sentences)), min(3, len(sentences))))
        parts.extend(sentences[k] for k in keep)
    return " ".join(parts)


def sample_documents(n_math: int = 120, n_other: int = 120, n_reposts: int = 20, n_quotes: int = 10,
                     seed: int = 0, quote_questions: list[str] | None = None) -> list[dict[str, Any]]:
    """The sample corpus as rows {"id", "text", "metadata": {"url", "label", "kind", ...}}, shuffled.

    `quote_questions`: benchmark test questions to quote (default: the packaged GSM8K and MATH500 test sets).

    >>> docs = sample_documents(4, 4, 1, 0)
    >>> len(docs), sorted({d["metadata"]["label"] for d in docs})
    (9, ['math', 'other'])
    """
    r = random.Random(seed)
    docs: list[dict[str, Any]] = []

    def add(kind: str, label: str, domain: str, text: str, **extra: Any) -> None:
        doc_id = f"{kind}-{sum(d['metadata']['kind'] == kind for d in docs):04d}"
        url = f"https://{domain}/{kind}/{doc_id}"
        docs.append({"id": doc_id, "text": text, "metadata": {"url": url, "label": label, "kind": kind, **extra}})

    for i in range(n_math):
        add("math", "math", MATH_DOMAINS[i % len(MATH_DOMAINS)], _page(r, MATH_TEMPLATES, MATH_OPENERS, i))
    for i in range(n_other):
        add("other", "other", OTHER_DOMAINS[i % len(OTHER_DOMAINS)], _page(r, OTHER_TEMPLATES, OTHER_OPENERS, i))
    originals = [d for d in docs if d["metadata"]["kind"] == "math"]
    for i in range(min(n_reposts, len(originals))):
        add("repost", "math", REPOST_DOMAINS[i % len(REPOST_DOMAINS)], _repost(r, originals[i]["text"]),
            original=originals[i]["id"])
    if n_quotes:
        questions = quote_questions if quote_questions is not None else _benchmark_questions(n_quotes, seed)
        for question in questions[:n_quotes]:
            add("benchmark_quote", "math", FORUM_DOMAIN, _quote(r, question))
    r.shuffle(docs)
    return docs


def _benchmark_questions(n: int, seed: int) -> list[str]:
    """`n` test questions from the packaged GSM8K and MATH500 sets, alternating."""
    from mathloop.data.benchmarks import load_benchmark
    from mathloop.data.sources import PACKAGED_DIR

    r = random.Random(seed)
    pools = [[p.question for p in load_benchmark(name, PACKAGED_DIR)] for name in ("gsm8k", "math500")]
    picks = [r.sample(pool, (n + 1) // 2) for pool in pools]
    return [q for pair in zip(*picks) for q in pair][:n]


def write_wet(path: str | Path, docs: list[dict[str, Any]]) -> Path:
    """`docs` as a gzipped WET file (WARC "conversion" records of plain text, as Common Crawl ships extracted text)."""
    import io

    from warcio.warcwriter import WARCWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=True)
        for doc in docs:
            headers = {"WARC-Identified-Payload-Type": "text/plain", "WARC-Date": "2026-01-01T00:00:00Z",
                       "WARC-Record-ID": f"<urn:uuid:{doc['id']}>"}
            writer.write_record(writer.create_warc_record(doc["metadata"]["url"], "conversion",
                                                          payload=io.BytesIO(doc["text"].encode()),
                                                          warc_headers_dict=headers))
    return path


def write_sample_corpus(out: str | Path, seed: int = 0, held_out: float = 0.25, **sizes: int) -> dict[str, Any]:
    """Write the sample corpus under `out`: web/part-0.jsonl.gz, web/part-1.parquet and web/part-2.warc.wet.gz (the
    pipeline's input, a third each), held_out.jsonl (labelled documents kept out of the input, for the classifier's
    precision and recall) and negatives.txt (non-math text, one document a line, for training). Returns counts."""
    out = Path(out)
    docs = sample_documents(seed=seed, **sizes)
    r = random.Random(seed + 1)
    plain = [d for d in docs if d["metadata"]["kind"] in ("math", "other")]
    held = set(d["id"] for d in r.sample(plain, int(len(plain) * held_out)))
    web = [d for d in docs if d["id"] not in held]
    (out / "web").mkdir(parents=True, exist_ok=True)
    thirds = [web[i::3] for i in range(3)]
    with gzip.open(out / "web" / "part-0.jsonl.gz", "wt", encoding="utf-8") as f:
        for d in thirds[0]:
            f.write(json.dumps({"id": d["id"], "text": d["text"], **d["metadata"]}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": d["id"], "text": d["text"], **d["metadata"]} for d in thirds[1]]
    pq.write_table(pa.Table.from_pylist(rows), out / "web" / "part-1.parquet")
    write_wet(out / "web" / "part-2.warc.wet.gz", thirds[2])
    with (out / "held_out.jsonl").open("w", encoding="utf-8") as f:
        for d in docs:
            if d["id"] in held:
                f.write(json.dumps({"id": d["id"], "text": d["text"], **d["metadata"]}) + "\n")
    negatives = sample_documents(0, 60, 0, 0, seed=seed + 2)
    (out / "negatives.txt").write_text("".join(d["text"] + "\n" for d in negatives), encoding="utf-8")
    kinds: dict[str, int] = {}
    for d in web:
        kinds[d["metadata"]["kind"]] = kinds.get(d["metadata"]["kind"], 0) + 1
    return {"out": str(out), "input_documents": len(web), "kinds": kinds, "held_out": len(held),
            "negatives": len(negatives)}
