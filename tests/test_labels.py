"""Tests for fusesnap.labels: label size limits (§1.4) and field masks (§7.2)."""

from __future__ import annotations

import pytest

from fusesnap.errors import InvalidArgument
from fusesnap.labels import MAX_LABEL_SIZE, apply_mask, clean, validate

# ---------------------------------------------------------------------------
# validate


def test_max_label_size_is_4096() -> None:
    assert MAX_LABEL_SIZE == 4096


def test_validate_accepts_empty_map() -> None:
    validate({})


def test_validate_accepts_key_and_value_of_exactly_4096_bytes() -> None:
    validate({"k" * 96: "v" * 4000})


def test_validate_rejects_key_and_value_of_4097_bytes() -> None:
    with pytest.raises(InvalidArgument):
        validate({"k" * 96: "v" * 4001})


def test_validate_accepts_4096_byte_key_with_empty_value() -> None:
    validate({"k" * 4096: ""})


def test_validate_rejects_4097_byte_key_alone() -> None:
    with pytest.raises(InvalidArgument):
        validate({"k" * 4097: ""})


def test_validate_checks_each_pair_separately() -> None:
    validate({"a": "x" * 4095, "b": "y" * 4095})


def test_validate_counts_multibyte_utf8_in_bytes_at_boundary() -> None:
    validate({"k": "é" * 2047 + "v"})  # 1 + 2*2047 + 1 = 4096 bytes


def test_validate_rejects_multibyte_utf8_over_limit_in_bytes() -> None:
    # Only 2049 characters, but 4097 bytes.
    with pytest.raises(InvalidArgument):
        validate({"k": "é" * 2048})


def test_validate_counts_multibyte_key_in_bytes() -> None:
    with pytest.raises(InvalidArgument):
        validate({"€" * 1366: ""})  # 4098 bytes
    validate({"€" * 1365: "a"})  # 4096 bytes


def test_validate_error_message_names_first_10_characters_of_key() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate({"containerd.io/snapshot/x": "v" * 5000})
    assert info.value.message == (
        "label key and value greater than maximum size (4096 bytes), key: containerd"
    )
    assert str(info.value) == info.value.message + ": invalid argument"


def test_validate_error_message_shows_short_key_whole() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate({"abc": "v" * 5000})
    assert info.value.message.endswith("key: abc")


def test_validate_error_message_truncates_by_characters_not_bytes() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate({"é" * 20: "v" * 5000})
    assert info.value.message.endswith("key: " + "é" * 10)


# ---------------------------------------------------------------------------
# clean


def test_clean_drops_pairs_with_empty_value() -> None:
    assert clean({"a": "1", "b": "", "c": "3"}) == {"a": "1", "c": "3"}


def test_clean_keeps_whitespace_values() -> None:
    assert clean({"a": " "}) == {"a": " "}


def test_clean_returns_a_new_dict() -> None:
    labels = {"a": "1"}
    result = clean(labels)
    result["b"] = "2"
    assert labels == {"a": "1"}


# ---------------------------------------------------------------------------
# apply_mask

CURRENT = {"keep": "k", "a": "old-a", "b": "old-b"}


def mask(
    paths: list[str], requested: dict[str, str], current: dict[str, str] | None = None
) -> dict[str, str]:
    return apply_mask(
        CURRENT if current is None else current, requested, paths, what="snapshot", name="snap-1"
    )


def test_empty_mask_replaces_whole_map() -> None:
    assert mask([], {"new": "n"}) == {"new": "n"}


def test_empty_mask_with_empty_request_clears_labels() -> None:
    assert mask([], {}) == {}


def test_empty_mask_drops_empty_values() -> None:
    assert mask([], {"new": "n", "gone": ""}) == {"new": "n"}


def test_labels_path_replaces_whole_map() -> None:
    assert mask(["labels"], {"new": "n"}) == {"new": "n"}


def test_labels_path_drops_empty_values() -> None:
    assert mask(["labels"], {"new": "n", "gone": ""}) == {"new": "n"}


def test_label_key_path_sets_requested_value() -> None:
    assert mask(["labels.a"], {"a": "new-a"}) == {"keep": "k", "a": "new-a", "b": "old-b"}


def test_label_key_path_adds_new_key() -> None:
    assert mask(["labels.c"], {"c": "3"}) == {**CURRENT, "c": "3"}


def test_label_key_path_ignores_other_requested_keys() -> None:
    assert mask(["labels.a"], {"a": "new-a", "b": "new-b", "z": "z"}) == {
        "keep": "k",
        "a": "new-a",
        "b": "old-b",
    }


def test_label_key_missing_from_request_deletes_label() -> None:
    assert mask(["labels.a"], {}) == {"keep": "k", "b": "old-b"}


def test_label_key_with_empty_requested_value_deletes_label() -> None:
    assert mask(["labels.a"], {"a": ""}) == {"keep": "k", "b": "old-b"}


def test_deleting_a_label_that_does_not_exist_is_a_no_op() -> None:
    assert mask(["labels.nope"], {}) == CURRENT


def test_label_key_is_taken_verbatim_with_dots_and_slashes() -> None:
    key = "containerd.io/snapshot/remote.ref"
    assert mask([f"labels.{key}"], {key: "x"}) == {**CURRENT, key: "x"}


def test_label_key_is_not_unquoted_or_split() -> None:
    assert mask(['labels."q"'], {'"q"': "x"}) == {**CURRENT, '"q"': "x"}


def test_label_key_path_with_empty_key_is_accepted() -> None:
    assert mask(["labels."], {}) == CURRENT


def test_several_label_key_paths_all_apply() -> None:
    assert mask(["labels.a", "labels.b", "labels.c"], {"a": "1", "c": "3"}) == {
        "keep": "k",
        "a": "1",
        "c": "3",
    }


def test_mask_paths_apply_in_order_key_then_whole_map() -> None:
    assert mask(["labels.a", "labels"], {"x": "1"}) == {"x": "1"}


def test_mask_paths_apply_in_order_whole_map_then_key() -> None:
    # "labels" installs the request, then "labels.x" deletes x (it is "" there).
    assert mask(["labels", "labels.x"], {"x": "", "y": "2"}) == {"y": "2"}
    assert mask(["labels", "labels.keep"], {"y": "2"}) == {"y": "2"}


def test_repeated_path_is_idempotent() -> None:
    assert mask(["labels.a", "labels.a"], {"a": "1"}) == {**CURRENT, "a": "1"}


def test_unknown_path_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as info:
        mask(["name"], {})
    assert info.value.message == 'cannot update "name" field on snapshot "snap-1"'


def test_unknown_path_message_uses_what_and_go_quoting() -> None:
    with pytest.raises(InvalidArgument) as info:
        apply_mask({}, {}, ['size"x'], what="content info", name='sha256:a\n"b')
    assert info.value.message == 'cannot update "size\\"x" field on content info "sha256:a\\n\\"b"'


def test_path_that_only_starts_with_labels_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match='"labelsx"'):
        mask(["labelsx"], {})


def test_empty_path_string_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        mask([""], {})


def test_invalid_path_after_valid_paths_raises() -> None:
    current = dict(CURRENT)
    with pytest.raises(InvalidArgument):
        apply_mask(current, {"a": "1"}, ["labels.a", "kind"], what="snapshot", name="s")
    assert current == CURRENT


def test_extra_paths_are_skipped() -> None:
    result = apply_mask(
        CURRENT,
        {"a": "1"},
        ["target", "labels.a", "annotations"],
        what="image",
        name="img",
        extra_paths={"target", "annotations"},
    )
    assert result == {**CURRENT, "a": "1"}


def test_extra_path_ending_in_dot_accepts_every_path_under_it() -> None:
    result = apply_mask(
        CURRENT,
        {},
        ["annotations.org.opencontainers.x"],
        what="image",
        name="img",
        extra_paths=("annotations.",),
    )
    assert result == CURRENT


def test_extra_path_without_trailing_dot_matches_exactly() -> None:
    with pytest.raises(InvalidArgument, match='"target.digest"'):
        apply_mask(
            CURRENT, {}, ["target.digest"], what="image", name="img", extra_paths=("target",)
        )


def test_extra_paths_do_not_override_label_paths() -> None:
    result = apply_mask(
        CURRENT, {}, ["labels.a"], what="image", name="img", extra_paths=("labels.",)
    )
    assert result == {"keep": "k", "b": "old-b"}


def test_apply_mask_does_not_modify_inputs() -> None:
    current = dict(CURRENT)
    requested = {"a": "", "b": "2"}
    apply_mask(current, requested, ["labels.a", "labels.b"], what="snapshot", name="s")
    assert current == CURRENT
    assert requested == {"a": "", "b": "2"}


def test_apply_mask_returns_a_new_dict() -> None:
    current = dict(CURRENT)
    result = apply_mask(current, {}, ["labels.nope"], what="snapshot", name="s")
    assert result == current
    assert result is not current


def test_apply_mask_drops_empty_values_from_current() -> None:
    assert mask(["labels.a"], {"a": "1"}, current={"stale": ""}) == {"a": "1"}


def test_result_of_key_path_is_size_validated() -> None:
    with pytest.raises(InvalidArgument, match="greater than maximum size"):
        mask(["labels.big"], {"big": "v" * 4094})  # 3 + 4094 = 4097


def test_key_path_result_at_exactly_4096_bytes_is_accepted() -> None:
    assert mask(["labels.big"], {"big": "v" * 4093})["big"] == "v" * 4093


def test_result_of_empty_mask_is_size_validated() -> None:
    with pytest.raises(InvalidArgument, match="greater than maximum size"):
        mask([], {"big": "v" * 5000})


def test_result_of_labels_path_is_size_validated() -> None:
    with pytest.raises(InvalidArgument, match="greater than maximum size"):
        mask(["labels"], {"big": "v" * 5000})


def test_oversized_request_entry_not_named_by_mask_is_ignored() -> None:
    assert mask(["labels.a"], {"a": "1", "big": "v" * 5000}) == {**CURRENT, "a": "1"}


def test_size_is_checked_after_merging_so_deleting_oversized_label_succeeds() -> None:
    current = {"big": "v" * 5000, "a": "1"}
    assert mask(["labels.big"], {}, current=current) == {"a": "1"}
