"""Fixtures: offline stand-ins for the hub data and model the Qwen3 recipes name, built by the tests, shaped like the real ones.

- A GSM8K folder: configs "main" and "socratic" and no default, as openai/gsm8k (so `load_dataset(folder)` raises
  "Config name is missing"); columns question / answer, answers ending in "#### N".
- A MATH folder: one config "default", as DigitalLearningGmbH/MATH-lighteval; columns problem / level / type /
  solution, the answer in the solution's last \\boxed{}.
Both are hub repo layouts: data files plus a README.md whose YAML header lists the configs, which is what
`datasets.load_dataset(folder, config, split=...)` reads for a hub dataset too.
- A tiny chat model: the character-level Qwen2 with ChatML markers and a Qwen3-style chat template.
"""

import json
from pathlib import Path

import pytest

GSM8K_ROWS = [
    ("Tom has 3 boxes of 4 pens. How many pens does he have?", "He has 3 * 4 = <<3*4=12>>12 pens.\n#### 12"),
    ("A cake costs $5. How much do 6 cakes cost?", "6 cakes cost 6 * 5 = <<6*5=30>>30 dollars.\n#### 30"),
    ("Ann read 7 pages on Monday and 9 on Tuesday. How many pages in all?", "7 + 9 = <<7+9=16>>16\n#### 16"),
    ("A bus has 40 seats and 13 are taken. How many are free?", "40 - 13 = <<40-13=27>>27 seats.\n#### 27"),
    ("Sam splits 24 cards among 3 friends. How many does each get?", "24 / 3 = <<24/3=8>>8 cards.\n#### 8"),
    ("A farm has 5 cows and twice as many hens. How many animals?", "Hens: 2 * 5 = 10. All: 15.\n#### 15"),
    ("Lily saves $2 a day for 9 days. How much does she save?", "2 * 9 = <<2*9=18>>18 dollars.\n#### 18"),
    ("A shelf holds 6 rows of 7 books. How many books?", "6 * 7 = <<6*7=42>>42 books.\n#### 42"),
    ("Max runs 3 km a day for a week. How far does he run?", "3 * 7 = <<3*7=21>>21 km.\n#### 21"),
    ("A pizza has 8 slices and 5 are eaten. How many are left?", "8 - 5 = <<8-5=3>>3 slices.\n#### 3"),
]
MATH_ROWS = [
    ("What is $\\frac{1}{2} + \\frac{1}{4}$?", "We get $\\frac{2}{4} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$."),
    ("Solve $2x + 3 = 11$.", "Subtract 3: $2x = 8$, so $x = \\boxed{4}$."),
    ("What is $\\sqrt{49}$?", "$7^2 = 49$, so $\\sqrt{49} = \\boxed{7}$."),
    ("Compute $3^4$.", "$3^4 = 81$, hence $\\boxed{81}$."),
    ("Simplify $\\frac{6}{8}$.", "Divide by 2: $\\boxed{\\frac{3}{4}}$."),
    ("What is $15\\%$ of 40?", "$0.15 \\cdot 40 = \\boxed{6}$."),
    ("Expand $(x+1)^2$.", "$(x+1)^2 = \\boxed{x^2+2x+1}$."),
    ("How many primes are less than 10?", "2, 3, 5, 7: $\\boxed{4}$."),
    ("What is $\\frac{2}{3} \\cdot 9$?", "$\\frac{18}{3} = \\boxed{6}$."),
    ("Find $x$ if $x^2 = 25$ and $x > 0$.", "So $x = \\boxed{5}$."),
]


# More training rows of the same shapes, so a recipe's full generation batch (16 prompts) fits.
GSM8K_MORE = [(f"A box holds {a} rows of {b} eggs. How many eggs are in {c} boxes?",
               f"One box: {a} * {b} = <<{a}*{b}={a * b}>>{a * b}. All: {a * b * c}.\n#### {a * b * c}")
              for a, b, c in zip(range(2, 18), range(3, 19), range(4, 20))]
MATH_MORE = [(f"Compute ${a} \\cdot {b} - {c}$.", f"${a * b} - {c} = \\boxed{{{a * b - c}}}$.")
             for a, b, c in zip(range(2, 18), range(5, 21), range(1, 17))]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _readme(configs: dict[str, list[str]]) -> str:
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {name}/{split}.jsonl" for split in splits]
    return "\n".join([*lines, "---", "Offline stand-in built by thermorl's tests.", ""])


def build_gsm8k_folder(root: Path) -> str:
    """openai/gsm8k's layout: configs main and socratic (no default), splits train and test."""
    for config in ("main", "socratic"):
        rows = [{"question": q, "answer": (a if config == "main" else f"How many? ** {a}")}
                for q, a in GSM8K_ROWS + GSM8K_MORE]
        _write_jsonl(root / config / "train.jsonl", rows[:8] + rows[10:])
        _write_jsonl(root / config / "test.jsonl", rows[8:10])
    (root / "README.md").write_text(_readme({"main": ["train", "test"], "socratic": ["train", "test"]}))
    return str(root)


def build_math_folder(root: Path) -> str:
    """DigitalLearningGmbH/MATH-lighteval's layout: one config "default", splits train and test."""
    rows = [{"problem": p, "level": "Level 1", "type": "Algebra", "solution": s} for p, s in MATH_ROWS + MATH_MORE]
    _write_jsonl(root / "default" / "train.jsonl", rows[:8] + rows[10:])
    _write_jsonl(root / "default" / "test.jsonl", rows[8:10])
    (root / "README.md").write_text(_readme({"default": ["train", "test"]}))
    return str(root)


def build_chat_model(root: Path) -> str:
    """The tiny Qwen2 with a Qwen3-style chat template and Qwen3-0.6B's 40960 positions: room for the recipes'
    prompts and max_completion_length (2048), which `thermorl train` and `check` hold against them."""
    from thermorl.models.tiny import build_tiny_model

    return build_tiny_model(root, seed=0, chat=True, max_position_embeddings=40960)


@pytest.fixture(scope="session")
def standins(tmp_path_factory):
    """{"gsm8k": folder, "math": folder, "chat_model": folder}, built once per test session."""
    root = tmp_path_factory.mktemp("hub")
    return {
        "gsm8k": build_gsm8k_folder(root / "gsm8k"),
        "math": build_math_folder(root / "math"),
        "chat_model": build_chat_model(root / "chat-model"),
    }
