"""Languages as data: ISO codes, family tables, and the language -> expert map.

A family table is an ordered mapping ``family name -> tuple of ISO codes``; the order of its
families is the order of expert ids. Three tables ship:

- ``"apollo50"``: the Apollo-MoE paper's 7 families over its 50 languages, exactly as the paper
  groups them (expert 0 Sino-Tibetan ... expert 6 Niger-Congo).
- ``"glottolog"``: a linguistically standard grouping (Glottolog top-level families) of the same
  languages plus a few extras (e.g. MoE-LPR's Greek, Hungarian, Turkish).
- ``"major12"``: one "family" per major language, in the paper's order ar de en ... zh, for the
  12-language experiments with per-language experts.
- ``"custom"``: no families of its own: only those of ``config.languages.custom_families``, in
  first-seen order (e.g. the synthetic corpus of ``medmoe_jax.data.synthetic``).

The config picks a table and an assignment (``"family"`` or ``"language"``);
:func:`expert_assignment` turns them into one array ``lang_id -> expert id`` for the router, where
``lang_id`` is a language's position in ``config.languages.use``. Every problem (unknown code,
language without a family, duplicate) is a ``ValueError`` that names it; nothing falls back
silently.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence

import numpy as np

# ISO 639 code -> English name. The 50 Apollo-MoE languages first, then extras.
LANGUAGE_NAMES: Mapping[str, str] = types.MappingProxyType({
    # Apollo-MoE: 12 major languages.
    "en": "English",
    "zh": "Chinese",
    "fr": "French",
    "hi": "Hindi",
    "es": "Spanish",
    "ar": "Arabic",
    "ru": "Russian",
    "ja": "Japanese",
    "ko": "Korean",
    "de": "German",
    "it": "Italian",
    "pt": "Portuguese",
    # Apollo-MoE: 38 minor languages.
    "mn": "Mongolian",
    "th": "Thai",
    "vi": "Vietnamese",
    "lo": "Lao",
    "mg": "Malagasy",
    "ceb": "Cebuano",
    "su": "Sundanese",
    "ilo": "Ilocano",
    "doi": "Dogri",
    "hr": "Croatian",
    "gl": "Galician",
    "cs": "Czech",
    "co": "Corsican",
    "lb": "Luxembourgish",
    "la": "Latin",
    "uk": "Ukrainian",
    "bs": "Bosnian",
    "bg": "Bulgarian",
    "eo": "Esperanto",
    "mai": "Maithili",
    "sr": "Serbian",
    "sq": "Albanian",
    "sk": "Slovak",
    "da": "Danish",
    "sa": "Sanskrit",
    "no": "Norwegian",
    "gn": "Guarani",
    "gd": "Scottish Gaelic",
    "ckb": "Central Kurdish (Sorani)",
    "mt": "Maltese",
    "he": "Hebrew",
    "ln": "Lingala",
    "bm": "Bambara",
    "sw": "Swahili",
    "nso": "Northern Sotho",
    "ig": "Igbo",
    "rw": "Kinyarwanda",
    "ha": "Hausa",
    # Extras: Nepali (see the paper's "Mongolian (Ne)"), MoE-LPR's languages, a few common ones.
    "ne": "Nepali",
    "el": "Greek",
    "hu": "Hungarian",
    "tr": "Turkish",
    "id": "Indonesian",
    "fa": "Persian",
    "bn": "Bengali",
})

MAJOR_LANGUAGES: tuple[str, ...] = (
    "en", "zh", "fr", "hi", "es", "ar", "ru", "ja", "ko", "de", "it", "pt")

# Family tables. The order of families is the order of expert ids.
_APOLLO50: dict[str, tuple[str, ...]] = {
    "Sino-Tibetan": ("zh",),
    "Altaic": ("ko", "ja", "mn"),
    "Australasian": ("th", "vi", "lo"),
    "Austronesian": ("mg", "ceb", "su", "ilo", "doi"),
    "Indo-European": (
        "en", "de", "pt", "es", "fr", "ru", "hi", "it", "hr", "gl", "cs", "co", "lb", "la",
        "uk", "bs", "bg", "eo", "mai", "sr", "sq", "sk", "da", "sa", "no", "gn", "gd"),
    "Afro-Asiatic": ("ar", "ckb", "mt", "he"),
    "Niger-Congo": ("ln", "bm", "sw", "nso", "ig", "rw", "ha"),
}

# Glottolog top-level families for the same 50 languages and the extras. Where it departs from
# the paper: doi, ckb are Indo-European; ha is Afro-Asiatic; bm is Mande; gn Tupian;
# eo constructed; th, lo Tai-Kadai; vi Austroasiatic; ko, ja, mn each their own family.
_GLOTTOLOG: dict[str, tuple[str, ...]] = {
    "Sino-Tibetan": ("zh",),
    "Koreanic": ("ko",),
    "Japonic": ("ja",),
    "Mongolic": ("mn",),
    "Tai-Kadai": ("th", "lo"),
    "Austroasiatic": ("vi",),
    "Austronesian": ("mg", "ceb", "su", "ilo", "id"),
    "Indo-European": (
        "en", "de", "pt", "es", "fr", "ru", "hi", "it", "hr", "gl", "cs", "co", "lb", "la",
        "uk", "bs", "bg", "mai", "sr", "sq", "sk", "da", "sa", "no", "gd", "doi", "ckb",
        "ne", "el", "fa", "bn"),
    "Afro-Asiatic": ("ar", "mt", "he", "ha"),
    "Atlantic-Congo": ("ln", "sw", "nso", "ig", "rw"),
    "Mande": ("bm",),
    "Tupian": ("gn",),
    "Turkic": ("tr",),
    "Uralic": ("hu",),
    "Constructed": ("eo",),
}

# The 12-language experiments: one expert per language, in the paper's order (ar 0 ... zh 11).
_MAJOR12: dict[str, tuple[str, ...]] = {
    code: (code,)
    for code in ("ar", "de", "en", "es", "fr", "hi", "it", "ja", "ko", "pt", "ru", "zh")
}

FAMILY_TABLES: Mapping[str, Mapping[str, tuple[str, ...]]] = types.MappingProxyType({
    "apollo50": types.MappingProxyType(_APOLLO50),
    "glottolog": types.MappingProxyType(_GLOTTOLOG),
    "major12": types.MappingProxyType(_MAJOR12),
    "custom": types.MappingProxyType({}),  # only config.languages.custom_families
})

APOLLO50_LANGUAGES: tuple[str, ...] = tuple(c for codes in _APOLLO50.values() for c in codes)
MINOR_LANGUAGES: tuple[str, ...] = tuple(c for c in APOLLO50_LANGUAGES if c not in MAJOR_LANGUAGES)

ASSIGNMENTS: tuple[str, ...] = ("family", "language")

# The paper writes "Mongolian (Ne)" in its Altaic family; `ne` is Nepali's code. Only on request
# (paper_ne_alias=True) is `ne` accepted as a member of that family.
_PAPER_NE_ALIAS_FAMILY = "Altaic"


def _known_codes_text() -> str:
    return ", ".join(sorted(LANGUAGE_NAMES))


def _check_known(code: str) -> None:
    if code not in LANGUAGE_NAMES:
        raise ValueError(
            f"unknown language code {code!r}; known codes: {_known_codes_text()}")


def language_name(code: str) -> str:
    """English name of a known ISO code, e.g. ``language_name("ckb")`` -> Central Kurdish."""
    _check_known(code)
    return LANGUAGE_NAMES[code]


def is_major(code: str) -> bool:
    """Whether ``code`` is one of Apollo-MoE's 12 major languages."""
    _check_known(code)
    return code in MAJOR_LANGUAGES


def family_table(
    name: str,
    *,
    paper_ne_alias: bool = False,
    custom_families: Mapping[str, str] | None = None,
) -> dict[str, tuple[str, ...]]:
    """A copy of the family table ``name``, optionally adjusted.

    Args:
        name: one of ``FAMILY_TABLES`` ("apollo50", "glottolog", "major12", "custom").
        paper_ne_alias: add ``ne`` to apollo50's Altaic family, for users who want the paper's
            literal "Mongolian (Ne)". Only valid with "apollo50".
        custom_families: ``code -> family name`` from the user's config. Each code is moved into
            (or added to) that family; families the table does not have are appended after the
            table's families, in first-seen order. Table families left empty stay (their ids keep).

    Returns:
        ``family name -> tuple of codes``, in expert-id order.
    """
    if name not in FAMILY_TABLES:
        raise ValueError(
            f"unknown family table {name!r} in config.languages.table; "
            f"choose one of {', '.join(FAMILY_TABLES)}")
    table = {family: tuple(codes) for family, codes in FAMILY_TABLES[name].items()}
    if paper_ne_alias:
        if name != "apollo50":
            raise ValueError(
                f"paper_ne_alias applies only to table 'apollo50' (the paper's "
                f"'Mongolian (Ne)'), not to {name!r}; unset config.languages.paper_ne_alias")
        table[_PAPER_NE_ALIAS_FAMILY] += ("ne",)
    for code, family in _validated_custom_families(custom_families).items():
        table = {f: tuple(c for c in codes if c != code) for f, codes in table.items()}
        table[family] = table.get(family, ()) + (code,)
    return table


def _validated_custom_families(custom_families: Mapping[str, str] | None) -> dict[str, str]:
    custom = dict(custom_families or {})
    for code, family in custom.items():
        if not (isinstance(code, str) and code and isinstance(family, str) and family):
            raise ValueError(
                f"config.languages.custom_families must map language codes to family names "
                f"(non-empty strings); got {code!r}: {family!r}")
    return custom


@dataclasses.dataclass(frozen=True)
class ExpertAssignment:
    """Which expert each language is routed to.

    Attributes:
        expert_names: expert id -> name (a family name, or a language code for per-language
            experts).
        lang_to_expert: lang_id -> expert id, in the order of the languages it was built from.
    """

    expert_names: tuple[str, ...]
    lang_to_expert: tuple[int, ...]

    @property
    def num_experts(self) -> int:
        return len(self.expert_names)

    def lang_to_expert_array(self) -> np.ndarray:
        """``lang_to_expert`` as an int32 array ``[num_languages]``, for the router."""
        return np.asarray(self.lang_to_expert, dtype=np.int32)


def expert_assignment(
    table: str,
    assignment: str,
    languages: Sequence[str],
    custom_families: Mapping[str, str] | None = None,
    *,
    paper_ne_alias: bool = False,
) -> ExpertAssignment:
    """Map ``languages`` (``config.languages.use``) to expert ids.

    Args:
        table: family table name (see :func:`family_table`).
        assignment: "family": experts are all the table's families in table order (so apollo50
            always gives 7 experts with the paper's ids), and each language goes to its family's
            expert. "language": one expert per language, in the order of ``languages``; when the
            table has one language per family (major12) and ``languages`` are exactly its
            languages, the table's order is used instead, so ids match the paper.
        languages: ISO codes; each must be in ``LANGUAGE_NAMES`` or declared in
            ``custom_families``.
        custom_families: ``code -> family name`` overrides and additions (see family_table).
        paper_ne_alias: accept ``ne`` as the paper's "Mongolian (Ne)" (apollo50 only).

    Raises:
        ValueError: unknown table, assignment or code; duplicate code; a language without a family
            in the table (family assignment).
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(
            f"unknown assignment {assignment!r} in config.languages.assignment; "
            f"choose one of {', '.join(ASSIGNMENTS)}")
    families = family_table(table, paper_ne_alias=paper_ne_alias, custom_families=custom_families)
    languages = _validated_languages(languages, declared=set(custom_families or {}))

    if assignment == "language":
        per_language_table = all(len(codes) == 1 for codes in families.values())
        table_order = tuple(codes[0] for codes in families.values() if codes)
        if per_language_table and set(languages) == set(table_order):
            expert_names = table_order
        else:
            expert_names = languages
        return ExpertAssignment(
            expert_names=expert_names,
            lang_to_expert=tuple(expert_names.index(code) for code in languages))

    family_of = {code: family for family, codes in families.items() for code in codes}
    expert_names = tuple(families)
    lang_to_expert = []
    for code in languages:
        if code not in family_of:
            raise ValueError(_no_family_message(code, table, expert_names))
        lang_to_expert.append(expert_names.index(family_of[code]))
    return ExpertAssignment(expert_names=expert_names, lang_to_expert=tuple(lang_to_expert))


def _validated_languages(languages: Sequence[str], declared: set[str]) -> tuple[str, ...]:
    if isinstance(languages, str):
        raise ValueError(
            f"config.languages.use must be a sequence of language codes, not the string "
            f"{languages!r}")
    languages = tuple(languages)
    if not languages:
        raise ValueError("config.languages.use is empty; list at least one language code")
    seen = set()
    for code in languages:
        if code not in LANGUAGE_NAMES and code not in declared:
            raise ValueError(
                f"unknown language code {code!r} in config.languages.use; known codes: "
                f"{_known_codes_text()}; declare it in config.languages.custom_families")
        if code in seen:
            raise ValueError(f"duplicate language code {code!r} in config.languages.use")
        seen.add(code)
    return languages


def _no_family_message(code: str, table: str, families: tuple[str, ...]) -> str:
    message = (
        f"language {code!r} ({LANGUAGE_NAMES[code]}) has no family in table {table!r} (families: "
        f"{', '.join(families)}); choose another config.languages.table or declare its family "
        f"in config.languages.custom_families")
    if code == "ne" and table == "apollo50":
        message += (
            "; 'ne' is Nepali: the paper's 'Mongolian (Ne)' is 'mn', or set "
            "config.languages.paper_ne_alias=True to accept 'ne' as the paper's alias")
    return message
