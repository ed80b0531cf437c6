"""Per-superclass robustness: classes grouped by a hierarchy (CIFAR-100's 20 coarse classes built
in, or a user's mapping file), each group's pooled accuracy with its Wilson interval and its
weakest member."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from classrobust.analysis.stats import wilson_interval
from classrobust.errors import UsageError

#: CIFAR-100's 20 coarse classes and their 5 fine classes each (Krizhevsky, 2009)
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
UNMAPPED = "(no superclass)"


def read_superclasses(path: str | Path, classes: list[str]) -> dict[str, list[str]]:
    """A mapping file: CSV with columns ``class,superclass`` (one row per class). Classes the file
    does not name go to one group, ``(no superclass)``; a class the result lacks is an error."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the superclass file {path}: {exc}") from None
    if not {"class", "superclass"} <= set(table.columns):
        raise UsageError(f"{path}: needs columns 'class' and 'superclass', found {', '.join(table.columns)}")
    unknown = sorted(set(table["class"]) - set(classes))
    if unknown:
        raise UsageError(f"{path}: classes not in the results: {', '.join(unknown[:5])}"
                         f"{', ...' if len(unknown) > 5 else ''}")
    twice = table["class"][table["class"].duplicated()].tolist()
    if twice:
        raise UsageError(f"{path}: classes listed twice: {', '.join(twice[:5])}")
    return mapping_for(classes, dict(zip(table["class"], table["superclass"])))


def mapping_for(classes: list[str], class_to_super: dict[str, str]) -> dict[str, list[str]]:
    """superclass -> its classes (in class order); unmapped classes in one group."""
    groups: dict[str, list[str]] = {}
    for name in classes:
        groups.setdefault(class_to_super.get(name, UNMAPPED), []).append(name)
    return groups


def default_superclasses(classes: list[str]) -> dict[str, list[str]] | None:
    """The built-in hierarchy that fits ``classes`` exactly (CIFAR-100's), else None."""
    fine = {c: coarse for coarse, members in CIFAR100_SUPERCLASSES.items() for c in members}
    if sorted(classes) == sorted(fine):
        return mapping_for(classes, fine)
    return None


def superclass_table(result, superclasses: dict[str, list[str]], confidence: float = 0.95) -> pd.DataFrame:
    """One row per (attack, superclass): its classes' pooled n, correct and accuracy with a Wilson
    interval, and its weakest member class with that class's accuracy."""
    index = {c: i for i, c in enumerate(result.classes)}
    rows = []
    for name, res in result.attacks.items():
        n, correct, acc = res.n_per_class, res.correct_per_class, res.accuracy_per_class
        for group, members in superclasses.items():
            ids = [index[m] for m in members]
            total, hits = int(n[ids].sum()), int(correct[ids].sum())
            lo, hi = wilson_interval(hits, total, confidence)
            present = [i for i in ids if n[i] > 0]
            weakest = min(present, key=lambda i: acc[i]) if present else None
            rows.append({"attack": name, "superclass": group, "classes": len(ids), "n": total, "correct": hits,
                         "accuracy": hits / total if total else float("nan"), "ci_low": float(lo),
                         "ci_high": float(hi),
                         "weakest_class": result.classes[weakest] if weakest is not None else "",
                         "weakest_class_accuracy": float(acc[weakest]) if weakest is not None else float("nan")})
    return pd.DataFrame(rows)
