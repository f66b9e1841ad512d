"""MovieLens loaders (ml-latest-small, ml-100k, ml-1m, ml-20m, ml-25m) for the official GroupLens layouts.

Data are read from a local directory or downloaded once from files.grouplens.org into a cache directory and
checked against known SHA-256 checksums. GroupLens licence: research use only, no commercial use without
permission; cite Harper & Konstan (2015).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.io import read_interactions, read_side_table, read_table
from recsys.datasets.base import RawDataset
from recsys.errors import DataError
from recsys.progress import progress

log = logging.getLogger(__name__)

__all__ = ["CITATION", "LICENCE", "MOVIELENS_VARIANTS", "default_cache_dir", "load_movielens"]

BASE_URL = "https://files.grouplens.org/datasets/movielens"
LICENCE = ("GroupLens MovieLens licence: research use only; no commercial or revenue-bearing use without permission "
           "from GroupLens; no endorsement implied; redistribution only under the same conditions; acknowledge the "
           "dataset in publications (see the README.txt shipped with the data).")
CITATION = ("F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context. "
            "ACM Transactions on Interactive Intelligent Systems (TiiS) 5, 4: 19:1-19:19. "
            "https://doi.org/10.1145/2827872")
_OFFLINE_HINT = ("pass path=DIR to load_movielens / load_dataset (or --data.path DIR on the command line), where DIR "
                 "is the unpacked folder holding the ratings file or its parent")

_GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
                "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
                "Western"]
_OCCUPATIONS_1M = ["other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                   "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
                   "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist", "self-employed",
                   "technician/engineer", "tradesman/craftsman", "unemployed", "writer"]
_NO_GENRES = {"(no genres listed)", "unknown"}
# "Title (1995)", "Title (2006-2007)" (en dash too), "Title (2007-)" with optional trailing blanks.
_YEAR_RE = re.compile(r"\s*\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")


@dataclass(frozen=True)
class _Variant:
    layout: str  # "csv" (latest-small/20m/25m), "100k" or "1m"
    ratings: str  # file whose presence identifies the data directory
    archive_sha256: str | None
    archive_size: int | None
    file_sha256: dict[str, str] = field(default_factory=dict)


# Archive checksums and sizes as published in tensorflow/datasets url_checksums/movielens.txt; the ml-latest-small
# per-file checksums are those of the 2018-09-26 release.
MOVIELENS_VARIANTS: dict[str, _Variant] = {
    "ml-latest-small": _Variant(
        "csv", "ratings.csv", "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436", 978202,
        {"ratings.csv": "80da8b3393dae325bbba5a31f291a6ba55d8d4f4396de3c456f2c1635b1b70e8",
         "movies.csv": "c47b783f23eb304413307e1bb05335e427737da20ec8d3c0e96335567dd5f3dc",
         "tags.csv": "68eec00a0820c2faa8863a6df7032f13d5899a4462bce9a97213905297ff3d34",
         "links.csv": "028a4a1d17751ca9276e0e0718cfc22356350f224a996e1ec348c23274b9209d"}),
    "ml-100k": _Variant("100k", "u.data", "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", 4924029),
    "ml-1m": _Variant("1m", "ratings.dat", "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", 5917549),
    "ml-20m": _Variant("csv", "ratings.csv", "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
                       198702078),
    "ml-25m": _Variant("csv", "ratings.csv", "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
                       261978986),
}


def default_cache_dir() -> Path:
    """Where downloads go unless told otherwise: $RECSYS_CACHE/datasets or ~/.cache/recsys/datasets."""
    root = os.environ.get("RECSYS_CACHE")
    return Path(root) / "datasets" if root else Path.home() / ".cache" / "recsys" / "datasets"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_dir(variant: str, path: Path) -> Path | None:
    ratings = MOVIELENS_VARIANTS[variant].ratings
    for candidate in (path, path / variant):
        if (candidate / ratings).is_file():
            return candidate
    return None


def _extract(archive: Path, dest: Path, variant: str) -> Path:
    """Unpack a GroupLens zip (top folder `variant/`) into dest/variant, refusing unsafe member names."""
    staging = dest / f".{variant}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if member.startswith(("/", "\\")) or ".." in Path(member).parts:
                    raise DataError(f"unsafe path {member!r} in archive", file=str(archive))
            zf.extractall(staging)
    except zipfile.BadZipFile as exc:
        raise DataError(f"not a valid zip archive: {exc}", file=str(archive)) from exc
    found = _find_dir(variant, staging)
    if found is None:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"archive does not contain {variant}/{MOVIELENS_VARIANTS[variant].ratings}", file=str(archive))
    target = dest / variant
    shutil.rmtree(target, ignore_errors=True)
    os.replace(found, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def _content_length(response) -> int | None:
    """The response's Content-Length in bytes, when the server sent a usable one."""
    try:
        n = int(response.headers.get("Content-Length", ""))
    except (AttributeError, TypeError, ValueError):
        return None
    return n if n > 0 else None


def _download(variant: str, cache_dir: Path) -> Path:
    """Fetch {variant}.zip with urllib, verify its checksum and unpack it; returns the data directory."""
    spec = MOVIELENS_VARIANTS[variant]
    url = f"{BASE_URL}/{variant}.zip"
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / f"{variant}.zip"
    if not archive.is_file():
        partial = archive.with_suffix(".zip.part")
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                total = _content_length(response) or spec.archive_size
                log.info("downloading %s (%s) into %s", url, f"{total / 2**20:.1f} MiB" if total else "size unknown",
                         cache_dir)
                with progress(total, f"downloading {variant}", "B") as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            partial.unlink(missing_ok=True)
            raise DataError(f"MovieLens {variant!r} is not available locally and downloading {url} failed ({exc}); "
                            f"{_OFFLINE_HINT}") from exc
        if spec.archive_sha256 is not None and digest.hexdigest() != spec.archive_sha256:
            partial.unlink(missing_ok=True)
            raise DataError(f"checksum mismatch for {url}: expected sha256 {spec.archive_sha256}, got "
                            f"{digest.hexdigest()}; the download is corrupt or GroupLens changed the archive",
                            file=str(archive))
        os.replace(partial, archive)
    return _extract(archive, cache_dir, variant)


def _resolve(variant: str, path: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
             download: bool) -> tuple[Path, str]:
    """Find the data directory; returns it and how it was obtained ("local", "cache" or "download")."""
    if path is not None:
        path = Path(path).expanduser()
        if path.is_file() and path.suffix.lower() == ".zip":
            cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
            cache.mkdir(parents=True, exist_ok=True)
            return _extract(path, cache, variant), "local"
        found = _find_dir(variant, path)
        if found is None:
            ratings = MOVIELENS_VARIANTS[variant].ratings
            raise DataError(f"MovieLens {variant!r} not found: expected {ratings} in this folder or in "
                            f"{variant}/ below it", file=str(path))
        return found, "local"
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    found = _find_dir(variant, cache)
    if found is not None:
        return found, "cache"
    if not download:
        raise DataError(f"MovieLens {variant!r} is not in the cache {cache} and download=False; {_OFFLINE_HINT}")
    return _download(variant, cache), "download"


def _verify(directory: Path, spec: _Variant, verify: bool) -> tuple[dict[str, str], list[str]]:
    """Hash the files that have known checksums and compare; returns (checksums, verified file names)."""
    sums, verified = {}, []
    if not verify:
        return sums, verified
    for name, expected in spec.file_sha256.items():
        file = directory / name
        if not file.is_file():
            continue
        actual = _sha256(file)
        sums[name] = actual
        if actual != expected:
            raise DataError(f"checksum mismatch: expected sha256 {expected}, got {actual}; the file was modified or "
                            f"comes from another release (pass verify=False to load it anyway)", file=str(file))
        verified.append(name)
    return sums, verified


def _split_title(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Strip a trailing "(1995)" from titles; returns (title, year as nullable Int64)."""
    titles = titles.astype(str)
    year = titles.str.extract(_YEAR_RE, expand=False)
    clean = titles.str.replace(_YEAR_RE, "", regex=True).str.strip()
    return clean.astype(str), pd.to_numeric(year, errors="coerce").astype("Int64")


def _clean_genres(genres: pd.Series) -> pd.Series:
    return pd.Series([[g for g in lst if g not in _NO_GENRES] for lst in genres], index=genres.index, dtype=object)


def _tags_by_item(tags_file: Path) -> pd.Series:
    """Per movie: lower-cased, stripped, deduplicated tags, most frequently applied first (ties alphabetical)."""
    df = read_table(tags_file)
    for col in ("movieId", "tag"):
        if col not in df.columns:
            raise DataError(f"missing column {col!r}; available columns: {list(df.columns)}", file=str(tags_file),
                            column=col)
    tags = df["tag"].astype(object).where(df["tag"].notna(), "").astype(str).str.strip().str.lower()
    frame = pd.DataFrame({"item": df["movieId"], "tag": tags})
    frame = frame[frame["tag"] != ""]
    counts = frame.groupby(["item", "tag"], sort=False).size().rename("n").reset_index()
    counts = counts.sort_values(["item", "n", "tag"], ascending=[True, False, True], kind="stable")
    return counts.groupby("item", sort=False)["tag"].agg(list)


def _load_csv_layout(directory: Path, with_tags: bool) -> tuple[pd.DataFrame, pd.DataFrame, None]:
    interactions = read_interactions(directory / "ratings.csv", user="userId", item="movieId", rating="rating",
                                     timestamp="timestamp")
    movies = read_side_table(directory / "movies.csv", key="movieId", key_as="item", multi_valued={"genres": "|"})
    title, year = _split_title(movies["title"])
    items = pd.DataFrame({"item": movies["item"], "title": title, "year": year,
                          "genres": _clean_genres(movies["genres"])})
    tags_file = directory / "tags.csv"
    if with_tags and tags_file.is_file():
        per_item = _tags_by_item(tags_file)
        items["tags"] = pd.Series([list(per_item.get(i, [])) for i in items["item"]], index=items.index, dtype=object)
    return interactions, items, None


def _zip_prefix(zips: pd.Series) -> pd.Series:
    return zips.astype(str).str.strip().str[:3].astype(str)


def _load_100k(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    data = directory / "u.data"
    ratings = read_table(data, sep="\t", header=None, names=["user", "item", "rating", "timestamp"])
    interactions = read_interactions(ratings, rating="rating", timestamp="timestamp", name=str(data))
    item_file = directory / "u.item"
    cols = ["item", "title", "release_date", "video_release_date", "imdb_url", *_GENRES_100K]
    raw = read_table(item_file, sep="|", header=None, names=cols, encoding="latin-1", quoting=csv.QUOTE_NONE)
    raw = read_side_table(raw, key="item", name=str(item_file))
    title, year = _split_title(raw["title"])
    # One movie has no year in its title; fall back to the release date ("01-Jan-1995").
    release_year = pd.to_numeric(raw["release_date"].astype(str).str[-4:], errors="coerce").astype("Int64")
    year = year.fillna(release_year)
    flags = raw[_GENRES_100K].fillna(0).to_numpy(dtype=np.int64).astype(bool)
    genres = pd.Series([[g for g, on in zip(_GENRES_100K, row, strict=True) if on and g not in _NO_GENRES]
                        for row in flags], index=raw.index, dtype=object)
    items = pd.DataFrame({"item": raw["item"], "title": title, "year": year, "genres": genres})
    users = None
    user_file = directory / "u.user"
    if user_file.is_file():
        raw_users = read_table(user_file, sep="|", header=None, names=["user", "age", "gender", "occupation", "zip"],
                               encoding="latin-1", dtype={"zip": str})
        raw_users = read_side_table(raw_users, key="user", name=str(user_file))
        users = pd.DataFrame({"user": raw_users["user"], "gender": raw_users["gender"].astype(str),
                              "age": raw_users["age"].astype(np.int64),
                              "occupation": raw_users["occupation"].astype(str),
                              "zip_prefix": _zip_prefix(raw_users["zip"])})
    return interactions, items, users


def _load_1m(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    data = directory / "ratings.dat"
    ratings = read_table(data, sep="::", header=None, names=["user", "item", "rating", "timestamp"])
    interactions = read_interactions(ratings, rating="rating", timestamp="timestamp", name=str(data))
    movie_file = directory / "movies.dat"
    raw = read_table(movie_file, sep="::", header=None, names=["item", "title", "genres"], encoding="latin-1",
                     quoting=csv.QUOTE_NONE)
    raw = read_side_table(raw, key="item", multi_valued={"genres": "|"}, name=str(movie_file))
    title, year = _split_title(raw["title"])
    items = pd.DataFrame({"item": raw["item"], "title": title, "year": year, "genres": _clean_genres(raw["genres"])})
    users = None
    user_file = directory / "users.dat"
    if user_file.is_file():
        raw_users = read_table(user_file, sep="::", header=None,
                               names=["user", "gender", "age", "occupation", "zip"], encoding="latin-1",
                               dtype={"zip": str})
        raw_users = read_side_table(raw_users, key="user", name=str(user_file))
        occupation = raw_users["occupation"].astype(np.int64)
        names = np.asarray(_OCCUPATIONS_1M, dtype=object)
        users = pd.DataFrame({"user": raw_users["user"], "gender": raw_users["gender"].astype(str),
                              # 1m stores an age bucket code (1, 18, 25, 35, 45, 50, 56): its lower bound.
                              "age": raw_users["age"].astype(np.int64),
                              "occupation": pd.Series(names[occupation.clip(0, len(names) - 1)], dtype=str),
                              "zip_prefix": _zip_prefix(raw_users["zip"])})
    return interactions, items, users


def load_movielens(variant: str = "ml-latest-small", path: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None, download: bool = True, with_tags: bool = True,
                   verify: bool = True) -> RawDataset:
    """Load a MovieLens release; every rating becomes an interaction (no threshold).

    Args:
        variant: "ml-latest-small", "ml-100k", "ml-1m", "ml-20m" or "ml-25m".
        path: local folder holding the files (or its parent holding `variant/`, or the official .zip); when given,
            nothing is downloaded.
        cache_dir: where downloads are kept (default: $RECSYS_CACHE/datasets or ~/.cache/recsys/datasets).
        download: fetch the official archive when the data are neither at `path` nor in the cache.
        with_tags: add a "tags" item column from tags.csv where the release has one.
        verify: check files against the known SHA-256 checksums (the archive is always checked on download).

    Returns:
        RawDataset with interactions (user, item int64; rating float32; timestamp int64), items (item, title
        without the year, year nullable Int64, genres list of str[, tags list of str]), users for ml-100k/ml-1m
        (user, gender, age, occupation, zip_prefix) and provenance in meta.

    Raises:
        DataError: unknown variant, files missing, checksum mismatch, malformed rows, or no local copy and no
            download possible (the message says to pass path=DIR / --data.path DIR).
    """
    if variant not in MOVIELENS_VARIANTS:
        raise DataError(f"unknown MovieLens variant {variant!r}; known: {sorted(MOVIELENS_VARIANTS)}")
    spec = MOVIELENS_VARIANTS[variant]
    directory, obtained = _resolve(variant, path, cache_dir, download)
    checksums, verified = _verify(directory, spec, verify)
    if spec.layout == "csv":
        interactions, items, users = _load_csv_layout(directory, with_tags)
    elif spec.layout == "100k":
        interactions, items, users = _load_100k(directory)
    else:
        interactions, items, users = _load_1m(directory)
    meta = {
        "variant": variant,
        "source": str(directory),
        "obtained": obtained,
        "url": f"{BASE_URL}/{variant}.zip",
        "archive_sha256": spec.archive_sha256,
        "checksums": checksums,
        "checksums_verified": verified,
        "licence": LICENCE,
        "licence_summary": "research use only, no commercial use",
        "citation": CITATION,
    }
    return RawDataset(name=variant, interactions=interactions, items=items, users=users, meta=meta)
