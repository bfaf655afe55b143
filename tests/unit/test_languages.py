"""Tests for medmoe_jax.languages: tables, expert assignment, and errors."""

import numpy as np
import pytest

from medmoe_jax import languages as L

APOLLO_EXPERT_OF_MAJOR = {
    "zh": 0, "ja": 1, "ko": 1, "en": 4, "de": 4, "pt": 4, "es": 4, "fr": 4, "ru": 4,
    "hi": 4, "it": 4, "ar": 5,
}


def test_apollo50_has_50_languages_in_7_families_with_paper_counts():
    table = L.family_table("apollo50")
    assert list(table) == [
        "Sino-Tibetan", "Altaic", "Australasian", "Austronesian", "Indo-European",
        "Afro-Asiatic", "Niger-Congo"]
    assert [len(codes) for codes in table.values()] == [1, 3, 3, 5, 27, 4, 7]
    codes = [c for members in table.values() for c in members]
    assert len(codes) == len(set(codes)) == 50
    assert set(codes) <= set(L.LANGUAGE_NAMES)
    assert table["Altaic"] == ("ko", "ja", "mn")
    assert "ne" not in codes
    assert set(table["Niger-Congo"]) == {"ln", "bm", "sw", "nso", "ig", "rw", "ha"}


def test_major_and_minor_languages_partition_the_50():
    assert L.MAJOR_LANGUAGES == (
        "en", "zh", "fr", "hi", "es", "ar", "ru", "ja", "ko", "de", "it", "pt")
    assert len(L.MINOR_LANGUAGES) == 38
    assert not set(L.MAJOR_LANGUAGES) & set(L.MINOR_LANGUAGES)
    assert set(L.MAJOR_LANGUAGES) | set(L.MINOR_LANGUAGES) == set(L.APOLLO50_LANGUAGES)
    assert L.is_major("en") and L.is_major("pt")
    assert not L.is_major("mn") and not L.is_major("ne")


def test_language_names():
    assert L.language_name("mn") == "Mongolian"
    assert L.language_name("ne") == "Nepali"
    assert L.language_name("el") == "Greek"
    assert L.language_name("hu") == "Hungarian"
    assert L.language_name("tr") == "Turkish"
    with pytest.raises(ValueError, match="'xx'"):
        L.language_name("xx")
    with pytest.raises(ValueError, match="'xx'"):
        L.is_major("xx")


def test_major_languages_family_experts_in_apollo50():
    langs = tuple(APOLLO_EXPERT_OF_MAJOR)
    result = L.expert_assignment("apollo50", "family", langs)
    assert result.num_experts == 7
    assert result.expert_names[0] == "Sino-Tibetan"
    assert result.expert_names[6] == "Niger-Congo"
    assert result.lang_to_expert == tuple(APOLLO_EXPERT_OF_MAJOR.values())
    array = result.lang_to_expert_array()
    assert array.dtype == np.int32
    np.testing.assert_array_equal(array, [0, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 5])


def test_family_assignment_keeps_all_families_and_paper_ids():
    result = L.expert_assignment("apollo50", "family", ["sw", "en"])
    assert result.num_experts == 7
    assert result.lang_to_expert == (6, 4)


def test_all_50_languages_get_their_paper_expert():
    result = L.expert_assignment("apollo50", "family", L.APOLLO50_LANGUAGES)
    counts = np.bincount(result.lang_to_expert_array(), minlength=7)
    np.testing.assert_array_equal(counts, [1, 3, 3, 5, 27, 4, 7])
    expert_of = dict(zip(L.APOLLO50_LANGUAGES, result.lang_to_expert))
    assert expert_of["doi"] == 3  # the paper puts Dogri with Austronesian
    assert expert_of["ha"] == 6
    assert expert_of["ckb"] == 5
    assert expert_of["gn"] == 4 and expert_of["eo"] == 4


def test_major12_table_order():
    table = L.family_table("major12")
    order = ["ar", "de", "en", "es", "fr", "hi", "it", "ja", "ko", "pt", "ru", "zh"]
    assert list(table) == order
    assert all(table[code] == (code,) for code in order)
    result = L.expert_assignment("major12", "family", L.MAJOR_LANGUAGES)
    assert result.expert_names == tuple(order)
    expert_of = dict(zip(L.MAJOR_LANGUAGES, result.lang_to_expert))
    assert expert_of == {code: i for i, code in enumerate(order)}


def test_language_assignment_with_major12_uses_paper_order_for_any_input_order():
    order = ("ar", "de", "en", "es", "fr", "hi", "it", "ja", "ko", "pt", "ru", "zh")
    result = L.expert_assignment("major12", "language", L.MAJOR_LANGUAGES)
    assert result.expert_names == order
    assert result.lang_to_expert == tuple(order.index(c) for c in L.MAJOR_LANGUAGES)
    assert result.lang_to_expert[:3] == (2, 11, 4)  # en, zh, fr


def test_language_assignment_follows_given_order():
    result = L.expert_assignment("apollo50", "language", ["zh", "en", "sw", "mn"])
    assert result.expert_names == ("zh", "en", "sw", "mn")
    assert result.lang_to_expert == (0, 1, 2, 3)
    # A subset of major12 is not the paper's 12-language set: the given order holds.
    result = L.expert_assignment("major12", "language", ["zh", "en"])
    assert result.expert_names == ("zh", "en")
    assert result.lang_to_expert == (0, 1)


def test_glottolog_departs_from_the_paper_where_linguistics_does():
    table = L.family_table("glottolog")
    family_of = {c: f for f, codes in table.items() for c in codes}
    assert len(family_of) == sum(len(codes) for codes in table.values())  # no duplicates
    assert set(L.APOLLO50_LANGUAGES) <= set(family_of)
    assert set(family_of) <= set(L.LANGUAGE_NAMES)
    expected = {
        "doi": "Indo-European", "ckb": "Indo-European", "gn": "Tupian", "eo": "Constructed",
        "ha": "Afro-Asiatic", "bm": "Mande", "th": "Tai-Kadai", "lo": "Tai-Kadai",
        "vi": "Austroasiatic", "ko": "Koreanic", "ja": "Japonic", "mn": "Mongolic",
        "zh": "Sino-Tibetan", "ar": "Afro-Asiatic", "mt": "Afro-Asiatic", "he": "Afro-Asiatic",
        "mg": "Austronesian", "ceb": "Austronesian", "su": "Austronesian",
        "ilo": "Austronesian", "ln": "Atlantic-Congo", "sw": "Atlantic-Congo",
        "nso": "Atlantic-Congo", "ig": "Atlantic-Congo", "rw": "Atlantic-Congo",
        "el": "Indo-European", "hu": "Uralic", "tr": "Turkic", "ne": "Indo-European",
    }
    assert {c: family_of[c] for c in expected} == expected
    rest = set(L.APOLLO50_LANGUAGES) - set(expected)
    assert {family_of[c] for c in rest} == {"Indo-European"}
    # The same languages in both tables, different experts.
    langs = ["doi", "vi", "ha"]
    paper = L.expert_assignment("apollo50", "family", langs)
    glotto = L.expert_assignment("glottolog", "family", langs)
    assert [paper.expert_names[e] for e in paper.lang_to_expert] == [
        "Austronesian", "Australasian", "Niger-Congo"]
    assert [glotto.expert_names[e] for e in glotto.lang_to_expert] == [
        "Indo-European", "Austroasiatic", "Afro-Asiatic"]


def test_unknown_code_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="unknown language code 'xx'") as info:
        L.expert_assignment("apollo50", "family", ["en", "xx"])
    assert "custom_families" in str(info.value)
    with pytest.raises(ValueError, match="'xx'"):
        L.expert_assignment("apollo50", "language", ["xx"])


def test_known_language_without_family_is_an_error_naming_language_and_table():
    with pytest.raises(ValueError, match=r"'el' \(Greek\).*'apollo50'"):
        L.expert_assignment("apollo50", "family", ["en", "el"])
    with pytest.raises(ValueError, match=r"'mn' \(Mongolian\).*'major12'"):
        L.expert_assignment("major12", "family", ["mn"])


def test_ne_alias_only_when_asked():
    with pytest.raises(ValueError, match="'ne'.*paper_ne_alias"):
        L.expert_assignment("apollo50", "family", ["ne"])
    assert "ne" not in L.family_table("apollo50")["Altaic"]
    assert L.family_table("apollo50", paper_ne_alias=True)["Altaic"] == ("ko", "ja", "mn", "ne")
    result = L.expert_assignment("apollo50", "family", ["ne", "mn"], paper_ne_alias=True)
    assert result.lang_to_expert == (1, 1)
    with pytest.raises(ValueError, match="paper_ne_alias"):
        L.family_table("glottolog", paper_ne_alias=True)
    # The shared table is not changed by the alias.
    assert "ne" not in L.FAMILY_TABLES["apollo50"]["Altaic"]


def test_custom_families_extend_and_override():
    custom = {"xx": "Klingonic", "el": "Indo-European", "doi": "Indo-European", "yy": "Elvish",
              "zz": "Klingonic"}
    result = L.expert_assignment(
        "apollo50", "family", ["en", "xx", "el", "doi", "yy", "zz"], custom_families=custom)
    assert result.expert_names == (
        "Sino-Tibetan", "Altaic", "Australasian", "Austronesian", "Indo-European",
        "Afro-Asiatic", "Niger-Congo", "Klingonic", "Elvish")
    assert result.lang_to_expert == (4, 7, 4, 4, 8, 7)
    table = L.family_table("apollo50", custom_families=custom)
    assert "doi" not in table["Austronesian"]
    assert len(table["Austronesian"]) == 4
    # Custom codes work with per-language experts too.
    result = L.expert_assignment("major12", "language", ["xx", "en"], custom_families=custom)
    assert result.expert_names == ("xx", "en")
    with pytest.raises(ValueError, match="custom_families"):
        L.family_table("apollo50", custom_families={"xx": ""})


def test_custom_family_can_empty_a_table_family_without_changing_ids():
    result = L.expert_assignment(
        "apollo50", "family", ["zh", "en"], custom_families={"zh": "Indo-European"})
    assert result.num_experts == 7
    assert result.lang_to_expert == (4, 4)


def test_duplicate_codes_are_an_error():
    with pytest.raises(ValueError, match="duplicate language code 'en'"):
        L.expert_assignment("apollo50", "family", ["en", "zh", "en"])
    with pytest.raises(ValueError, match="duplicate language code 'zh'"):
        L.expert_assignment("major12", "language", ["zh", "zh"])


def test_bad_table_assignment_and_languages_are_errors():
    with pytest.raises(ValueError, match="unknown family table 'wals'"):
        L.expert_assignment("wals", "family", ["en"])
    with pytest.raises(ValueError, match="unknown assignment 'token'"):
        L.expert_assignment("apollo50", "token", ["en"])
    with pytest.raises(ValueError, match="not the string"):
        L.expert_assignment("apollo50", "family", "en")
    with pytest.raises(ValueError, match="empty"):
        L.expert_assignment("apollo50", "family", [])


def test_expert_assignment_is_frozen():
    result = L.expert_assignment("apollo50", "family", ["en"])
    with pytest.raises(AttributeError):
        result.lang_to_expert = (0,)
