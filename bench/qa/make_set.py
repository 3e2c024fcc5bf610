"""Writes the grounded-answer quality set (corpus.jsonl, questions.jsonl) from the fact tables below.

    python -m bench.qa.make_set          # rewrites both files; the output is deterministic

Every fact belongs to a *family* (project codes, cluster sizes, ...). Entities come in pairs with
near-identical names and the same kind of fact, so retrieval returns the sibling too and a model must
read the right document: each answerable question lists its sibling's value as a distractor, which an
answer must not contain. Unanswerable questions ask the same kind of question about an entity the
corpus never mentions, next to siblings it does; the right answer is to say the documents do not tell.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261201
GENERAL_PER_FAMILY = 33

# Pairs of near-identical names: each pair shares a family and differs in its fact.
NAME_PAIRS = [
    ("Zephyr", "Zephyrus"),
    ("Orion", "Orionis"),
    ("Kestrel", "Kestral"),
    ("Marlin", "Merlin"),
    ("Halcyon", "Halcyone"),
    ("Basalt", "Basilt"),
    ("Cobalt", "Cobolt"),
    ("Juniper", "Juniperus"),
    ("Tamarind", "Tamarisk"),
    ("Vesper", "Vespera"),
    ("Quill", "Quillon"),
    ("Saffron", "Saffran"),
    ("Nimbus", "Nimbo"),
    ("Obsidian", "Obsidia"),
    ("Pelican", "Pelikan"),
    ("Rowan", "Rowen"),
    ("Sable", "Sablon"),
    ("Tundra", "Tundro"),
    ("Umber", "Umbra"),
    ("Vireo", "Vireon"),
    ("Wren", "Wrenna"),
    ("Yarrow", "Yarrowby"),
    ("Alder", "Aldergrove"),
    ("Bramble", "Brambling"),
    ("Cinder", "Cinderby"),
    ("Dune", "Dunmore"),
    ("Ember", "Emberly"),
    ("Fennel", "Fenwick"),
    ("Garnet", "Garnett"),
    ("Heron", "Herondale"),
    ("Indigo", "Indiga"),
    ("Jasper", "Jaspar"),
    ("Kelp", "Kelpie"),
    ("Lumen", "Lumina"),
    ("Mistral", "Mistrale"),
    ("Nova", "Novalis"),
    ("Onyx", "Onyxia"),
    ("Pumice", "Pumicea"),
    ("Quartz", "Quartzite"),
    ("Raven", "Ravenna"),
    ("Solstice", "Solsticia"),
    ("Thistle", "Thistledown"),
    ("Ultra", "Ultima"),
    ("Velvet", "Velveta"),
    ("Willow", "Willowby"),
    ("Xenon", "Xenia"),
    ("Yonder", "Yondera"),
    ("Zinnia", "Zinnober"),
    ("Aurora", "Aurelia"),
    ("Borealis", "Boreas"),
]
# Names that never appear in the corpus: the subjects of unanswerable questions.
ABSENT_NAMES = [
    "Calypso",
    "Draco",
    "Elysium",
    "Falcon",
    "Gossamer",
    "Hyperion",
    "Icarus",
    "Jubilee",
    "Kraken",
    "Lotus",
    "Meridian",
    "Nebula",
    "Odyssey",
    "Phoenix",
    "Quasar",
    "Radiant",
    "Sirocco",
    "Titan",
    "Utopia",
    "Valkyrie",
    "Whisper",
    "Xanadu",
    "Yeti",
    "Zodiac",
    "Atlas",
    "Beacon",
    "Cascade",
    "Delta",
    "Echo",
    "Fjord",
    "Glacier",
    "Harbor",
    "Ivory",
    "Jade",
    "Karma",
    "Lagoon",
    "Monsoon",
    "Nectar",
    "Oasis",
    "Prism",
    "Quest",
    "Ripple",
    "Summit",
    "Tempest",
    "Umbrella",
    "Vortex",
    "Wildfire",
    "Xylo",
    "Yucca",
    "Zenith",
]
CITIES = [
    "Oslo",
    "Lisbon",
    "Tallinn",
    "Porto",
    "Ghent",
    "Bergen",
    "Turku",
    "Graz",
    "Split",
    "Riga",
    "Leipzig",
    "Bilbao",
    "Krakow",
    "Aarhus",
    "Cork",
    "Malmo",
    "Lyon",
    "Brno",
    "Tromso",
    "Nantes",
]
ISLANDS = [
    "Skye",
    "Gotland",
    "Madeira",
    "Hvar",
    "Saaremaa",
    "Corfu",
    "Bornholm",
    "Texel",
    "Ischia",
    "Lewis",
    "Malta",
    "Rhodes",
    "Gozo",
    "Jersey",
    "Sylt",
    "Capri",
    "Elba",
    "Arran",
    "Aland",
    "Mull",
]
PEOPLE = [
    "Ingrid Halvorsen",
    "Tomas Vrba",
    "Amara Okafor",
    "Lena Moreau",
    "Kenji Aoki",
    "Priya Raman",
    "Mateo Silva",
    "Freya Lund",
    "Omar Haddad",
    "Zofia Nowak",
    "Elias Berg",
    "Nadia Petrova",
    "Hugo Laurent",
    "Sara Lindqvist",
    "Diego Ortega",
    "Maya Cohen",
    "Anton Keller",
    "Ines Duarte",
    "Viktor Sand",
    "Leila Farah",
    "Rafael Costa",
    "Hanna Virtanen",
    "Jonas Weber",
    "Alma Kovac",
    "Noah Brandt",
    "Clara Rossi",
    "Ivan Horvat",
    "Mina Park",
    "Felix Novak",
    "Greta Olsen",
]
ANIMALS = [
    "otter",
    "lynx",
    "heron",
    "badger",
    "ibex",
    "walrus",
    "marten",
    "puffin",
    "bison",
    "gecko",
    "tapir",
    "osprey",
    "jackal",
    "narwhal",
    "ocelot",
    "stoat",
    "pangolin",
    "kiwi",
    "yak",
    "wombat",
]
COLOURS = ["crimson", "teal", "amber", "violet", "silver", "emerald", "ochre", "cobalt", "scarlet", "ivory"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


@dataclass(frozen=True)
class Family:
    """One kind of fact: how a document states it and how a question asks for it."""

    name: str
    noun: str  # what the named thing is: "project", "cluster", ...
    value: Callable[[random.Random], str]
    fact: str  # "{name}", "{value}", "{extra}" filled in
    question: str
    filler: tuple[str, ...]
    extra: Callable[[random.Random], str] = lambda rng: ""


FAMILIES = [
    Family(
        "project_code",
        "project",
        lambda r: str(r.randint(1000, 9999)),
        "The secret access code of the {name} project is {value}.",
        "What is the secret access code of the {name} project?",
        (
            "The {name} project started as a side effort of the platform team.",
            "Its code is rotated only when a member leaves the team.",
            "Requests to join the {name} project go through the security office.",
        ),
    ),
    Family(
        "cluster_nodes",
        "cluster",
        lambda r: str(r.choice(range(16, 1024, 8))),
        "The {name} compute cluster in {extra} has {value} nodes.",
        "How many nodes does the {name} compute cluster have?",
        (
            "The {name} cluster runs batch jobs overnight and interactive work by day.",
            "Its operators publish a maintenance calendar every quarter.",
            "Access to the {name} cluster requires a signed usage agreement.",
        ),
        extra=lambda r: r.choice(CITIES),
    ),
    Family(
        "lighthouse_island",
        "lighthouse",
        lambda r: r.choice(ISLANDS),
        "The {name} lighthouse stands on the island of {value}.",
        "On which island does the {name} lighthouse stand?",
        (
            "The {name} lighthouse was automated after its last keeper retired.",
            "Its light can be seen from more than twenty nautical miles away.",
            "Visitors may climb the tower of the {name} lighthouse in summer.",
        ),
    ),
    Family(
        "lab_director",
        "laboratory",
        lambda r: r.choice(PEOPLE),
        "The director of the {name} laboratory is {value}.",
        "Who is the director of the {name} laboratory?",
        (
            "The {name} laboratory studies materials for long-lived batteries.",
            "It employs researchers from several countries and hosts a yearly open day.",
            "The {name} laboratory publishes its results in open-access journals.",
        ),
    ),
    Family(
        "festival_date",
        "festival",
        lambda r: f"{r.choice(MONTHS)} {r.randint(1, 28)}",
        "The {name} festival is held every year on {value}.",
        "On what date is the {name} festival held every year?",
        (
            "The {name} festival features music, street food and a lantern parade.",
            "Its organisers are volunteers from the old town.",
            "Tickets for the {name} festival are free for children.",
        ),
    ),
    Family(
        "team_mascot",
        "rowing club",
        lambda r: r.choice(ANIMALS),
        "The mascot of the {name} rowing club is a {extra} {value}.",
        "What animal is the mascot of the {name} rowing club?",
        (
            "The {name} rowing club trains on the river every morning at dawn.",
            "Its boats are painted in the club's colours.",
            "The {name} rowing club won its first regatta decades ago.",
        ),
        extra=lambda r: r.choice(COLOURS),
    ),
]


def _document(family: Family, name: str, value: str, rng: random.Random) -> str:
    filler = [line.format(name=name) for line in family.filler]
    fact = family.fact.format(name=name, value=value, extra=family.extra(rng))
    # The fact sits among the filler at a random place, as facts do in real documents.
    filler.insert(rng.randint(0, len(filler)), fact)
    return " ".join(filler)


def build() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    rng = random.Random(SEED)
    corpus: list[dict[str, object]] = []
    questions: list[dict[str, object]] = []
    pairs = NAME_PAIRS[:]
    rng.shuffle(pairs)
    absent = ABSENT_NAMES[:]
    rng.shuffle(absent)
    for n, (first, second) in enumerate(pairs):
        family = FAMILIES[n % len(FAMILIES)]
        # Two entities per pair and distinct values, so a sibling's value is always a wrong answer.
        values = [family.value(rng), family.value(rng)]
        while values[1] == values[0]:
            values[1] = family.value(rng)
        for name, value, other in ((first, values[0], values[1]), (second, values[1], values[0])):
            doc_id = f"{family.name}-{name.lower()}"
            corpus.append({"id": doc_id, "text": _document(family, name, value, rng), "family": family.name})
            questions.append(
                {
                    "id": f"q-{doc_id}",
                    "question": family.question.format(name=name),
                    "answer": value,
                    "distractors": [other],
                    "source": doc_id,
                    "family": family.name,
                }
            )
        if n < len(absent):
            # Asked about a name the corpus lacks, next to a pair it has: every value of the pair is invented.
            name = absent[n]
            questions.append(
                {
                    "id": f"q-absent-{family.name}-{name.lower()}",
                    "question": family.question.format(name=name),
                    "answer": None,
                    "distractors": values,
                    "source": None,
                    "family": family.name,
                }
            )
    # Documents that answer nothing: general text about the same kinds of things, so the index is not
    # made of fact documents alone.
    for family in FAMILIES:
        seen: set[str] = set()
        while len(seen) < GENERAL_PER_FAMILY:
            text = " ".join(line.format(name=rng.choice(CITIES)) for line in rng.sample(family.filler, 2))
            if text not in seen:
                seen.add(text)
                corpus.append(
                    {"id": f"general-{family.name}-{len(seen)}", "text": text, "family": family.name}
                )
    rng.shuffle(corpus)
    return corpus, questions


def main() -> None:
    corpus, questions = build()
    for file, rows in (("corpus.jsonl", corpus), ("questions.jsonl", questions)):
        (HERE / file).write_text("".join(json.dumps(row) + "\n" for row in rows))
    answerable = sum(q["answer"] is not None for q in questions)
    print(
        f"{len(corpus)} documents, {answerable} answerable and {len(questions) - answerable} unanswerable questions"
    )


if __name__ == "__main__":
    main()
