"""The embedded default dataset: a seeded synthetic recommender dataset with known ground truth.

Generative story (all vectorised, ~0.5 s at the default size):

1. Concepts (explicit, named dimensions such as "space" or "romance") have latent embeddings clustered around
   category centres, so items cluster by category in latent space.
2. Each item belongs to one category and carries 2-4 concepts drawn from that category's concept distribution;
   its latent factor is the mean of its concepts' embeddings plus noise. Text attributes (title, description,
   brand, ...) are generated from the category's and concepts' vocabularies, so text carries the latent signal.
3. Each user starts from a preference built from a few concepts of a home category and drifts towards another
   concept over time. Items are drawn without replacement from softmax(affinity + Zipf popularity bias) (Gumbel
   top-k), the number per user follows a heavy-tailed activity distribution, and each user's items are ordered by
   how well they match the drift direction, so the order of a sequence carries signal.
4. Ratings 1-5 follow the affinity; user features (age group, country, device) are drawn from the latent factors.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from recsys.datasets.base import RawDataset
from recsys.errors import DataError

__all__ = ["CATEGORY_VOCAB", "CONCEPT_VOCAB", "generate_synthetic"]

#: Readable concept names with their topic words (used for descriptions and titles).
CONCEPT_VOCAB: dict[str, list[str]] = {
    "space": ["space", "orbit", "rocket", "galaxy", "star", "astronaut", "planet"],
    "romance": ["love", "heart", "romance", "kiss", "wedding", "passion", "letters"],
    "crime": ["crime", "detective", "murder", "heist", "police", "gangster", "alibi"],
    "history": ["history", "empire", "ancient", "dynasty", "century", "kingdom", "archive"],
    "nature": ["forest", "river", "mountain", "wildlife", "garden", "meadow", "season"],
    "technology": ["robot", "circuit", "software", "digital", "network", "machine", "code"],
    "music": ["melody", "rhythm", "guitar", "concert", "song", "band", "chorus"],
    "sports": ["football", "league", "champion", "race", "stadium", "coach", "goal"],
    "food": ["recipe", "kitchen", "flavor", "bread", "spice", "chef", "feast"],
    "travel": ["journey", "voyage", "passport", "island", "road", "harbor", "map"],
    "fantasy": ["dragon", "wizard", "magic", "quest", "sword", "realm", "spell"],
    "horror": ["ghost", "haunted", "nightmare", "blood", "curse", "shadow", "scream"],
    "comedy": ["laugh", "prank", "joke", "silly", "party", "mischief", "farce"],
    "family": ["family", "childhood", "parents", "home", "siblings", "holiday", "friendship"],
    "science": ["experiment", "laboratory", "theory", "physics", "discovery", "atom", "evolution"],
    "art": ["painting", "canvas", "sculpture", "gallery", "portrait", "design", "color"],
    "war": ["battle", "soldier", "army", "siege", "frontline", "general", "victory"],
    "business": ["market", "company", "startup", "finance", "profit", "deal", "office"],
    "health": ["fitness", "wellness", "yoga", "nutrition", "sleep", "healing", "balance"],
    "fashion": ["style", "fabric", "runway", "trend", "tailor", "vintage", "denim"],
    "mystery": ["secret", "clue", "puzzle", "riddle", "enigma", "mask", "cipher"],
    "ocean": ["ocean", "wave", "reef", "sailor", "tide", "whale", "coast"],
    "politics": ["election", "senate", "policy", "campaign", "nation", "debate", "treaty"],
    "animals": ["dog", "cat", "horse", "bird", "wolf", "lion", "puppy"],
}

#: Category names with the nouns their titles use.
CATEGORY_VOCAB: dict[str, list[str]] = {
    "books": ["Chronicles", "Tales", "Diaries", "Guide", "Saga", "Almanac"],
    "films": ["Story", "Legacy", "Returns", "Affair", "Escape", "Night"],
    "albums": ["Sessions", "Anthems", "Echoes", "Live", "Sounds", "Ballads"],
    "games": ["Quest", "Arena", "Tactics", "Legends", "Rush", "Frontier"],
    "gadgets": ["Pro", "Mini", "Hub", "Pad", "Sense", "Link"],
    "outdoor": ["Trail", "Camp", "Summit", "Ridge", "Trek", "Pack"],
    "home": ["Living", "Nest", "Table", "Craft", "Corner", "Studio"],
    "apparel": ["Wear", "Line", "Edit", "Thread", "Fit", "Collection"],
}

_ADJECTIVES = ["Silent", "Golden", "Lost", "Bright", "Hidden", "Wild", "Last", "Little", "Great", "Secret",
               "Broken", "Endless", "Northern", "Crimson", "Quiet", "Electric", "Ancient", "Brave", "Lucky", "Modern"]
_FILLER = ["the", "a", "of", "and", "with", "in", "for", "new", "classic", "edition", "about", "an", "unique"]
_SYLLABLES = ["lu", "mor", "vex", "ta", "ri", "zen", "ka", "no", "bel", "dra", "quo", "sil", "fen", "ar", "to", "ix"]
_AGE_GROUPS = ["18-24", "25-34", "35-44", "45-54", "55+"]
_COUNTRIES = ["US", "GB", "DE", "FR", "JP", "BR", "IN", "CA"]
_DEVICES = ["mobile", "desktop", "tablet", "tv"]
_T0 = 1420070400  # 2015-01-01 UTC: timestamps start here and span about four years
_SPAN = 4 * 365 * 86400
_BRANDS_PER_CATEGORY = 5


def _concept_names(n: int) -> tuple[list[str], list[list[str]]]:
    base = list(CONCEPT_VOCAB.items())
    names, words = [], []
    for k in range(n):
        if k < len(base):
            names.append(base[k][0])
            words.append(base[k][1])
        else:
            names.append(f"concept_{k:02d}")
            words.append([f"term{k:02d}{c}" for c in "abcdefg"])
    return names, words


def _category_names(n: int) -> tuple[list[str], list[list[str]]]:
    base = list(CATEGORY_VOCAB.items())
    names, nouns = [], []
    for k in range(n):
        if k < len(base):
            names.append(base[k][0])
            nouns.append(base[k][1])
        else:
            names.append(f"category_{k:02d}")
            nouns.append([f"Series{k:02d}{c}" for c in "ABCDEF"])
    return names, nouns


def _gumbel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return -np.log(-np.log(rng.uniform(1e-12, 1.0, size=shape)))


def _softmax_sample(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """One categorical draw per row of `logits` (Gumbel-max trick)."""
    return np.argmax(logits + _gumbel(rng, logits.shape), axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _activity_counts(rng: np.random.Generator, n_users: int, n_interactions: int, cap: int) -> np.ndarray:
    """Heavy-tailed per-user counts summing exactly to n_interactions, each within [min, cap]."""
    lo = int(min(5, n_interactions // n_users, cap))
    lo = max(lo, 1)
    weights = rng.lognormal(0.0, 1.0, size=n_users)
    counts = np.full(n_users, lo, dtype=np.int64)
    remaining = n_interactions - counts.sum()
    # Hand out the remainder proportionally; users at the cap drop out and their share is redistributed.
    while remaining > 0:
        room = cap - counts
        w = np.where(room > 0, weights, 0.0)
        share = w / w.sum() * remaining
        add = np.minimum(np.floor(share).astype(np.int64), room)
        if add.sum() == 0:
            # Largest remainders get the last few units.
            order = np.argsort(-(share - np.floor(share)) * (room > 0), kind="stable")
            add = np.zeros(n_users, dtype=np.int64)
            add[order[:remaining]] = 1
            add = np.minimum(add, room)
        counts += add
        remaining = n_interactions - counts.sum()
    return counts


def generate_synthetic(n_users: int = 2000, n_items: int = 1000, n_interactions: int = 50000, n_factors: int = 8,
                       n_concepts: int = 24, seed: int = 0, popularity_skew: float = 1.0,
                       n_categories: int | None = None, drift: float = 0.5) -> RawDataset:
    """Generate a deterministic synthetic dataset with ratings, timestamps, item text and user features.

    Args:
        n_users: number of users (all have at least one interaction).
        n_items: number of items (popular ones dominate; a few may never be drawn).
        n_interactions: exact number of (user, item) interactions; no user repeats an item.
        n_factors: latent dimension of the ground-truth user/item factors.
        n_concepts: number of named concepts (explicit dimensions); names beyond the 24 built-in ones are
            "concept_NN".
        seed: seed of the numpy Generator; equal arguments give equal datasets.
        popularity_skew: Zipf exponent of the item popularity bias (0 disables it).
        n_categories: number of item categories / latent clusters (default: n_factors).
        drift: how far each user's preference moves over time (0 = no drift, 1 = a full move to a new concept).

    Returns:
        RawDataset "synthetic" with interactions (user int64, item int64, rating float32, timestamp int64) sorted by
        user then time, items (item, title, category, brand, description, year, concepts, price), users (user,
        age_group, country, device, true_concepts) and the ground truth in meta.

    Raises:
        DataError: sizes that cannot be satisfied (a ValueError).
    """
    start = time.perf_counter()
    n_categories = n_factors if n_categories is None else n_categories
    cap = max(1, n_items // 2)
    if min(n_users, n_items, n_factors, n_concepts, n_categories) < 1:
        raise DataError("synthetic: n_users, n_items, n_factors, n_concepts and n_categories must be >= 1 "
                        "(--data.options)")
    if not n_users <= n_interactions <= n_users * cap:
        raise DataError(f"synthetic: n_interactions must be between n_users ({n_users}) and n_users * n_items // 2 "
                        f"({n_users * cap}); got {n_interactions} (--data.options)")
    rng = np.random.default_rng(seed)
    concept_names, concept_words = _concept_names(n_concepts)
    category_names, category_nouns = _category_names(n_categories)

    # --- concepts and categories: concept embeddings sit near their home category's centre (clustered latent space)
    centres = _unit(rng.normal(size=(n_categories, n_factors)))
    concept_home = np.arange(n_concepts) % n_categories
    concept_factors = _unit(0.8 * centres[concept_home] + 0.6 * _unit(rng.normal(size=(n_concepts, n_factors))))
    alpha = 0.15 + 3.0 * (concept_home[None, :] == np.arange(n_categories)[:, None])
    category_concept_p = np.stack([rng.dirichlet(a) for a in alpha])  # (n_categories, n_concepts)

    # --- items
    item_category = rng.choice(n_categories, size=n_items, p=rng.dirichlet(np.full(n_categories, 4.0)))
    k_item = rng.integers(min(2, n_concepts), min(4, n_concepts) + 1, size=n_items)
    keys = np.log(category_concept_p[item_category] + 1e-12) + _gumbel(rng, (n_items, n_concepts))
    ranked = np.argsort(-keys, axis=1)  # dominant concept first
    take = np.arange(n_concepts)[None, :] < k_item[:, None]
    item_concepts = np.zeros((n_items, n_concepts), dtype=np.float32)
    np.put_along_axis(item_concepts, ranked, take.astype(np.float32), axis=1)
    item_factors = (item_concepts @ concept_factors) / k_item[:, None]
    item_factors = _unit(item_factors + 0.25 * rng.normal(size=(n_items, n_factors))).astype(np.float32)
    popularity_rank = rng.permutation(n_items) + 1
    item_bias = (-popularity_skew * np.log(popularity_rank)).astype(np.float32)

    # --- users: a few concepts of a home category, drifting towards another concept
    user_home = rng.choice(n_categories, size=n_users, p=rng.dirichlet(np.full(n_categories, 4.0)))
    mix = 0.8 * category_concept_p[user_home] + 0.2 / n_concepts
    k_user = min(3, n_concepts)
    liked = np.argsort(-(np.log(mix) + _gumbel(rng, (n_users, n_concepts))), axis=1)[:, :k_user]
    user_start = _unit(concept_factors[liked].mean(axis=1) + 0.3 * rng.normal(size=(n_users, n_factors)))
    drift_to = _softmax_sample(rng, np.log(category_concept_p[rng.integers(0, n_categories, size=n_users)] + 1e-12))
    user_end = _unit((1.0 - drift) * user_start + drift * concept_factors[drift_to])
    user_factors = _unit(user_start + user_end).astype(np.float32)
    user_start, user_end = user_start.astype(np.float32), user_end.astype(np.float32)

    # --- interactions: Gumbel top-k per user = sampling without replacement from softmax(affinity + bias)
    counts = _activity_counts(rng, n_users, n_interactions, cap)
    sample = user_factors[: min(n_users, 256)] @ item_factors.T
    aff_mean, aff_std = float(sample.mean()), float(sample.std() + 1e-6)
    temperature = 2.0
    users_out = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    items_out = np.empty(n_interactions, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    chunk = max(1, 4_000_000 // n_items)  # bounds the dense (chunk x n_items) score block to ~32 MB
    for lo in range(0, n_users, chunk):
        hi = min(n_users, lo + chunk)
        logits = temperature * (user_factors[lo:hi] @ item_factors.T - aff_mean) / aff_std + item_bias
        logits += _gumbel(rng, logits.shape).astype(np.float32)
        kmax = int(counts[lo:hi].max())
        top = np.argpartition(-logits, kmax - 1, axis=1)[:, :kmax] if kmax < n_items else np.tile(
            np.arange(n_items), (hi - lo, 1))
        top_keys = np.take_along_axis(logits, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-top_keys, axis=1), axis=1)
        keep = np.arange(kmax)[None, :] < counts[lo:hi, None]
        items_out[offsets[lo]:offsets[hi]] = top[keep]

    # --- order within user by the drift direction (plus noise), so later items match the later preference
    direction = user_end - user_start
    proj = np.einsum("nf,nf->n", item_factors[items_out], direction[users_out])
    proj = (proj - proj.mean()) / (proj.std() + 1e-9)
    order_key = proj + 0.7 * rng.normal(size=n_interactions)
    order = np.lexsort((order_key, users_out))
    items_out = items_out[order]
    # Gaps between consecutive events: per-user pace times exponential waiting times.
    pace = rng.lognormal(np.log(86400.0), 1.0, size=n_users)
    gaps = 1 + np.floor(rng.exponential(1.0, size=n_interactions) * pace[users_out]).astype(np.int64)
    cum = np.cumsum(gaps)
    cum -= np.repeat(cum[offsets[:-1]] - gaps[offsets[:-1]], counts)  # restart the running sum at each user
    total = cum[offsets[1:] - 1]
    start_t = _T0 + (rng.uniform(size=n_users) * np.maximum(_SPAN - total, 0)).astype(np.int64)
    timestamps = start_t[users_out] + cum

    # --- ratings follow the (time-averaged) affinity
    affinity = np.einsum("nf,nf->n", item_factors[items_out], user_factors[users_out])
    affinity = (affinity - affinity.mean()) / (affinity.std() + 1e-9)
    user_rating_bias = rng.normal(0.0, 0.4, size=n_users)
    raw = 3.6 + 1.0 * affinity + user_rating_bias[users_out] + 0.1 * item_bias[items_out] + rng.normal(
        0.0, 0.6, size=n_interactions)
    ratings = np.clip(np.rint(raw), 1, 5).astype(np.float32)

    interactions = pd.DataFrame({"user": users_out, "item": items_out, "rating": ratings,
                                 "timestamp": timestamps.astype(np.int64)})

    items = _item_table(rng, item_factors, item_category, ranked, k_item, item_bias, category_names, category_nouns,
                        concept_names, concept_words)
    users = _user_table(rng, user_factors, concept_factors, concept_names)
    meta = {
        "source": "recsys.datasets.synthetic.generate_synthetic",
        "licence": "generated data, no restrictions (CC0)",
        "seed": seed,
        "params": {"n_users": n_users, "n_items": n_items, "n_interactions": n_interactions, "n_factors": n_factors,
                   "n_concepts": n_concepts, "n_categories": n_categories, "popularity_skew": popularity_skew,
                   "drift": drift, "seed": seed},
        "user_factors": user_factors,
        "user_factors_start": user_start,
        "user_factors_end": user_end,
        "item_factors": item_factors,
        "item_bias": item_bias,
        "concept_names": concept_names,
        "concept_factors": concept_factors.astype(np.float32),
        "item_concept_matrix": item_concepts,
        "category_names": category_names,
        "item_category": item_category.astype(np.int64),
        "user_home_category": user_home.astype(np.int64),
        "generation_seconds": time.perf_counter() - start,
    }
    return RawDataset(name="synthetic", interactions=interactions, items=items, users=users, meta=meta)


def _item_table(rng: np.random.Generator, item_factors: np.ndarray, item_category: np.ndarray, ranked: np.ndarray,
                k_item: np.ndarray, item_bias: np.ndarray, category_names: list[str], category_nouns: list[list[str]],
                concept_names: list[str], concept_words: list[list[str]]) -> pd.DataFrame:
    """Item attributes derived from category, concepts and latent factors (so text predicts behaviour)."""
    n_items, n_factors = item_factors.shape
    n_categories = len(category_names)
    brands = []
    for _ in range(n_categories):
        syl = rng.integers(0, len(_SYLLABLES), size=(_BRANDS_PER_CATEGORY, 3))
        brands.append(["".join(_SYLLABLES[s] for s in row).capitalize() for row in syl])
    # Popular items tend to come from a category's leading brands.
    brand_idx = np.minimum((rng.exponential(1.2, size=n_items) * (1.0 + 0.1 * -item_bias)).astype(int) % 5,
                           _BRANDS_PER_CATEGORY - 1)
    adjective = rng.integers(0, len(_ADJECTIVES), size=n_items)
    noun = rng.integers(0, 6, size=n_items)
    title_word = rng.integers(0, 7, size=n_items)
    n_words = rng.integers(12, 25, size=n_items)
    max_words = int(n_words.max())
    # Each description word comes from a concept vocabulary (70%), the category nouns (15%) or filler (15%).
    source = rng.uniform(size=(n_items, max_words))
    which_concept = (rng.uniform(size=(n_items, max_words)) * k_item[:, None]).astype(int)
    word_pick = rng.integers(0, 1 << 30, size=(n_items, max_words))
    titles, descriptions, concepts = [], [], []
    for i in range(n_items):
        cat = item_category[i]
        own = ranked[i, : k_item[i]]
        dominant_words = concept_words[own[0]]
        titles.append(f"{_ADJECTIVES[adjective[i]]} {dominant_words[title_word[i] % len(dominant_words)].capitalize()} "
                      f"{category_nouns[cat][noun[i]]}")
        words = []
        for w in range(n_words[i]):
            if source[i, w] < 0.7:
                vocab = concept_words[own[which_concept[i, w]]]
            elif source[i, w] < 0.85:
                vocab = category_nouns[cat]
            else:
                vocab = _FILLER
            words.append(vocab[word_pick[i, w] % len(vocab)].lower())
        descriptions.append(" ".join(words))
        concepts.append([concept_names[c] for c in own])
    scale = item_factors.std(axis=0) + 1e-9
    year = np.clip(np.rint(2008 + 7.0 * item_factors[:, 0] / scale[0] + rng.normal(0, 4, size=n_items)), 1960, 2024)
    base_price = np.exp(rng.uniform(np.log(5.0), np.log(200.0), size=n_categories))
    factor_1 = item_factors[:, 1 % n_factors] / scale[1 % n_factors]
    price = np.round(base_price[item_category] * np.exp(0.3 * factor_1 + rng.normal(0, 0.3, size=n_items)), 2)
    return pd.DataFrame({
        "item": np.arange(n_items, dtype=np.int64),
        "title": pd.Series(titles, dtype=str),
        "category": pd.Series([category_names[c] for c in item_category], dtype=str),
        "brand": pd.Series([brands[c][b] for c, b in zip(item_category, brand_idx, strict=True)], dtype=str),
        "description": pd.Series(descriptions, dtype=str),
        "year": year.astype(np.int64),
        "concepts": pd.Series(concepts, dtype=object),
        "price": price.astype(np.float64),
    })


def _user_table(rng: np.random.Generator, user_factors: np.ndarray, concept_factors: np.ndarray,
                concept_names: list[str]) -> pd.DataFrame:
    """User features drawn from softmax(latent factor projections), so they are informative but noisy."""
    n_users, n_factors = user_factors.shape
    columns = {"user": np.arange(n_users, dtype=np.int64)}
    for name, values in (("age_group", _AGE_GROUPS), ("country", _COUNTRIES), ("device", _DEVICES)):
        proj = rng.normal(size=(n_factors, len(values)))
        idx = _softmax_sample(rng, 2.5 * user_factors @ proj)
        columns[name] = pd.Series(np.asarray(values, dtype=object)[idx], dtype=str)
    top = np.argsort(-(user_factors @ concept_factors.T), axis=1)[:, : min(3, len(concept_names))]
    columns["true_concepts"] = pd.Series([[concept_names[c] for c in row] for row in top], dtype=object)
    return pd.DataFrame(columns)
