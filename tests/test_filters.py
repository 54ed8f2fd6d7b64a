"""Tests for fusesnap.filters: containerd's filter language (spec §7.1)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fusesnap.errors import InvalidArgument
from fusesnap.filters import Adaptor, Filter, Operator, Selector, object_adaptor, parse
from fusesnap.quoting import quote

# ---------------------------------------------------------------------------
# helpers


def matches(
    filters: Sequence[str],
    fields: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> bool:
    return parse(filters).match(object_adaptor(fields or {}, labels, annotations))


def snapshot(
    name: str, parent: str = "", kind: str = "active", labels: Mapping[str, str] | None = None
) -> dict[str, object]:
    return {"fields": {"name": name, "parent": parent, "kind": kind}, "labels": labels}


def snap_matches(filters: Sequence[str], snap: dict[str, object]) -> bool:
    fields = snap["fields"]
    labels = snap["labels"]
    assert isinstance(fields, dict)
    assert labels is None or isinstance(labels, dict)
    return parse(filters).match(object_adaptor(fields, labels))


def invalid(filter_text: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parse([filter_text])
    return info.value


def single_value(filter_text: str) -> str:
    """Parse a one-selector filter and return its (decoded) value."""
    (selectors,) = parse([filter_text]).alternatives
    (selector,) = selectors
    return selector.value


# ---------------------------------------------------------------------------
# top level: OR of filters, AND of selectors


def test_no_filters_match_everything() -> None:
    assert matches([], {})
    assert matches([], {"name": "x"}, {"a": "b"})


def test_empty_string_filter_matches_everything() -> None:
    assert matches([""], {})


def test_empty_string_filter_among_others_matches_everything() -> None:
    assert matches(["name==nope", ""], {"name": "x"})


def test_filters_in_list_are_ored() -> None:
    assert matches(["name==a", "name==b"], {"name": "a"})
    assert matches(["name==a", "name==b"], {"name": "b"})
    assert not matches(["name==a", "name==b"], {"name": "c"})


def test_comma_separated_selectors_are_anded() -> None:
    assert matches(["name==a,kind==view"], {"name": "a", "kind": "view"})
    assert not matches(["name==a,kind==view"], {"name": "a", "kind": "active"})
    assert not matches(["name==a,kind==view"], {"name": "b", "kind": "view"})


def test_parse_accepts_tuple_of_filters() -> None:
    assert matches(("name==a",), {"name": "a"})


def test_single_string_instead_of_list_is_type_error() -> None:
    with pytest.raises(TypeError):
        parse("name==a")


def test_filter_of_only_whitespace_is_invalid_argument() -> None:
    invalid("  ")


def test_error_in_any_filter_of_the_list_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match=re.escape("[name==foo >| |< ,x]")):
        parse(["name==a", "name==foo ,x"])


def test_parse_error_message_marks_offending_character() -> None:
    err = invalid("image~=,id?=?fbaq")
    assert err.message == (
        "filters: parse error: [image~= >|,|< id?=?fbaq]: expected value or quoted"
    )
    assert str(err).endswith(": invalid argument")


def test_parse_error_at_end_of_input_shows_whole_filter() -> None:
    assert invalid("name==foo,").message == (
        "filters: parse error: [name==foo,]: expected field or quoted"
    )


def test_parsed_filter_exposes_selectors() -> None:
    parsed = parse(["name==a,labels.x", "kind~=v"])
    assert parsed == Filter(
        (
            (
                Selector(("name",), Operator.EQUAL, "a"),
                Selector(("labels", "x"), Operator.PRESENT),
            ),
            (Selector(("kind",), Operator.MATCHES, "v"),),
        )
    )


def test_matches_everything_property() -> None:
    assert parse([]).matches_everything
    assert parse(["name==a", ""]).matches_everything
    assert not parse(["name==a"]).matches_everything


def test_adaptor_receives_fieldpath_as_tuple() -> None:
    seen: list[tuple[str, ...]] = []

    def adaptor(path: tuple[str, ...]) -> str | None:
        seen.append(path)
        return "v"

    assert parse(['labels."a.b".c==v']).match(adaptor)
    assert seen == [("labels", "a.b", "c")]


# ---------------------------------------------------------------------------
# presence (no operator)


def test_bare_fieldpath_matches_present_field() -> None:
    assert matches(["labels.foo"], {}, {"foo": "1"})


def test_bare_fieldpath_rejects_absent_field() -> None:
    assert not matches(["labels.foo"], {}, {"bar": "1"})


def test_bare_fieldpath_rejects_label_when_object_has_no_labels() -> None:
    assert not matches(["labels.foo"], {"name": "x"}, None)


def test_present_field_with_empty_value_counts_as_present() -> None:
    assert matches(["parent"], {"parent": ""})


# ---------------------------------------------------------------------------
# ==


def test_equal_matches_same_value() -> None:
    assert matches(["name==foo"], {"name": "foo"})


def test_equal_rejects_different_value() -> None:
    assert not matches(["name==foo"], {"name": "food"})


def test_equal_rejects_absent_field() -> None:
    assert not matches(["name==foo"], {})


def test_equal_with_empty_quoted_value_matches_present_empty_field() -> None:
    assert matches(['parent==""'], {"parent": ""})


def test_equal_with_empty_quoted_value_rejects_absent_field() -> None:
    assert not matches(['labels.a==""'], {}, {"b": "1"})


# ---------------------------------------------------------------------------
# !=


def test_not_equal_matches_different_value() -> None:
    assert matches(["name!=foo"], {"name": "bar"})


def test_not_equal_rejects_same_value() -> None:
    assert not matches(["name!=foo"], {"name": "foo"})


def test_not_equal_matches_absent_field() -> None:
    assert matches(["labels.a!=x"], {}, {"b": "1"})


def test_not_equal_empty_value_rejects_absent_field() -> None:
    assert not matches(['labels.a!=""'], {}, {"b": "1"})


def test_not_equal_empty_value_matches_present_nonempty_field() -> None:
    assert matches(['labels.a!=""'], {}, {"a": "1"})


# ---------------------------------------------------------------------------
# ~=


def test_regex_is_an_unanchored_search() -> None:
    assert matches(["name~=usy"], {"name": "busybox"})


def test_regex_anchors_are_honoured() -> None:
    assert not matches(["name~=^usy"], {"name": "busybox"})


def test_regex_against_absent_field_uses_empty_string() -> None:
    assert matches(["labels.a~=^$"], {}, {"b": "1"})
    assert not matches(['labels.a~="."'], {}, {"b": "1"})


def test_regex_against_object_without_labels_uses_empty_string() -> None:
    assert matches(["labels.a~=^$"], {"name": "x"})


def test_regex_slash_delimited() -> None:
    assert single_value("name~=/^a,b c$/") == "^a,b c$"
    assert matches(["name~=/^a,b c$/"], {"name": "a,b c"})


def test_regex_pipe_delimited() -> None:
    assert single_value("ref~=|^a/b|") == "^a/b"
    assert matches(["ref~=|^a/b|"], {"ref": "a/bc"})


def test_regex_double_quoted() -> None:
    assert matches(['name~="^a b$"'], {"name": "a b"})


def test_slash_delimited_regex_may_use_alternation() -> None:
    assert matches(["name~=/^(foo|bar)$/"], {"name": "bar"})


def test_escaped_slash_inside_slash_delimited_regex() -> None:
    assert single_value(r"name~=/a\/b/") == "a/b"


def test_escaped_pipe_inside_pipe_delimited_regex() -> None:
    assert single_value(r"name~=|a\|b|") == "a|b"


def test_double_quote_is_plain_inside_slash_delimited_regex() -> None:
    # From containerd's own tests: valid syntax, value is `[abc]{0,1}"/`.
    assert single_value('other~=/[abc]{0,1}"\\//') == '[abc]{0,1}"/'


def test_regex_backslash_class_must_be_escaped_inside_delimiters() -> None:
    invalid(r"name~=/\d+/")
    assert single_value(r"name~=/\\d+/") == r"\d+"


def test_unquoted_regex_may_contain_backslash() -> None:
    assert matches([r"name~=^\d+$"], {"name": "123"})


def test_invalid_regex_is_invalid_argument() -> None:
    err = invalid("name~=(")
    assert "invalid regular expression" in err.message


def test_regex_is_compiled_at_parse_time() -> None:
    (selectors,) = parse(["name~=^a"]).alternatives
    assert selectors[0].regex is not None
    assert selectors[0].regex.search(b"abc") is not None


# Go's regexp, which containerd uses, is RE2: no backreferences, no lookaround.
def test_regex_backreference_is_invalid_argument() -> None:
    assert invalid(r"name~=(a)\1").message == (
        r'filters: parse error: [name~= >|(|< a)\1]: '
        r'invalid regular expression "(a)\\1": invalid escape sequence: \1'
    )


def test_regex_lookahead_is_invalid_argument() -> None:
    assert invalid("name~=^a(?=b)").message == (
        'filters: parse error: [name~= >|^|< a(?=b)]: '
        'invalid regular expression "^a(?=b)": invalid perl operator: (?='
    )


def test_regex_of_invalid_utf8_is_invalid_argument() -> None:
    assert invalid(r'name~="\xff"').message.endswith(
        r'invalid regular expression "\xff": invalid UTF-8'
    )


def test_regex_dot_matches_one_unicode_character() -> None:
    assert matches(["name~=^.$"], {"name": "世"})
    assert matches(["name~=^caf.$"], {"name": "café"})


def test_regex_may_hold_unicode_literals() -> None:
    assert matches(["name~=é世"], {"name": "xé世y"})
    assert not matches(["name~=é世"], {"name": "e世"})


def test_slash_quoted_value_with_equal_operator_is_invalid_argument() -> None:
    assert "invalid quote encountered" in invalid("name==/foo/").message


def test_pipe_quoted_value_with_not_equal_operator_is_invalid_argument() -> None:
    assert "invalid quote encountered" in invalid("name!=|foo|").message


def test_alt_quoted_fieldpath_component_is_invalid_argument() -> None:
    err = invalid("labels.|foo|==omg_asdf.asdf-qwer")
    assert err.message == (
        "filters: parse error: [labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered"
    )


# ---------------------------------------------------------------------------
# operators


@pytest.mark.parametrize("op", ["=", "===", "=~", "!", "!!", "~", "~~=", "=!", "!==", "==!"])
def test_other_operator_runs_are_invalid_argument(op: str) -> None:
    err = invalid(f"name{op}foo")
    assert f'unsupported operator "{op}"' in err.message


def test_operator_without_fieldpath_is_invalid_argument() -> None:
    invalid("==foo")


def test_fieldpath_followed_by_non_operator_is_invalid_argument() -> None:
    assert "expected an operator" in invalid("name:foo").message


def test_empty_unquoted_value_is_invalid_argument() -> None:
    assert "expected value or quoted" in invalid("parent==").message


def test_empty_value_before_comma_is_invalid_argument() -> None:
    invalid("parent==,name==a")


def test_empty_value_after_whitespace_is_invalid_argument() -> None:
    invalid("parent== ")


# ---------------------------------------------------------------------------
# whitespace


def test_whitespace_before_selector_is_allowed() -> None:
    assert matches(["  name==a"], {"name": "a"})


def test_whitespace_after_comma_is_allowed() -> None:
    assert matches(["name==a,  kind==view"], {"name": "a", "kind": "view"})


def test_whitespace_around_operator_is_allowed() -> None:
    assert matches(["name  ==  a"], {"name": "a"})


def test_whitespace_before_quoted_value_is_allowed() -> None:
    assert matches(['name== "a"'], {"name": "a"})


def test_tabs_and_newlines_count_as_whitespace() -> None:
    assert matches(["\tname\n==\ta"], {"name": "a"})


def test_trailing_space_after_value_is_invalid_argument() -> None:
    err = invalid("name==foo ")
    assert err.message == "filters: parse error: [name==foo >| |< ]: unexpected input:  "


def test_space_before_comma_after_value_is_invalid_argument() -> None:
    invalid("name==foo , x")


def test_trailing_space_after_quoted_value_is_invalid_argument() -> None:
    invalid('name=="foo" ')


def test_space_inside_unquoted_value_is_invalid_argument() -> None:
    invalid("name==foo bar")


def test_trailing_space_after_bare_fieldpath_is_invalid_argument() -> None:
    assert "expected an operator" in invalid("labels.foo ").message


def test_space_between_bare_fieldpath_and_comma_is_invalid_argument() -> None:
    invalid("labels.foo ,name==a")


def test_space_before_field_separator_is_invalid_argument() -> None:
    invalid("labels .foo")


def test_space_after_field_separator_is_allowed() -> None:
    # containerd's scanner skips whitespace before every field component.
    assert matches(["labels. foo"], {}, {"foo": "1"})


def test_unicode_space_ends_a_value() -> None:
    invalid("name==foo\u3000")


# ---------------------------------------------------------------------------
# unquoted values


def test_unquoted_value_may_contain_colon_slash_dot_and_plus() -> None:
    mt = "application/vnd.oci.image.index.v1+json"
    assert single_value(f"target.mediatype=={mt}") == mt


def test_unquoted_value_may_contain_operator_characters_after_first() -> None:
    assert single_value("name==a=b!c~d") == "a=b!c~d"


def test_unquoted_value_may_contain_quote_characters_after_first() -> None:
    assert single_value('name==a"b|c/d') == 'a"b|c/d'


def test_unquoted_value_ends_at_comma() -> None:
    assert matches(["name==a,labels.b"], {"name": "a"}, {"b": "1"})
    assert not matches(["name==a,labels.b"], {"name": "a,labels.b"})


def test_unquoted_value_may_be_non_ascii() -> None:
    assert matches(["name==héllo-世界"], {"name": "héllo-世界"})


def test_unquoted_value_may_start_with_a_field_character() -> None:
    assert single_value("name==_x9") == "_x9"


@pytest.mark.parametrize("first", ["/", "|", '"', ".", ",", "=", "!", "~"])
def test_unquoted_value_starting_with_reserved_character_is_invalid_argument(first: str) -> None:
    invalid(f"name=={first}abc")


@pytest.mark.parametrize("first", ["/", "|", '"', ".", ",", "=", "!", "~"])
def test_value_starting_with_reserved_character_works_when_double_quoted(first: str) -> None:
    value = first + "abc"
    escaped = value.replace('"', '\\"')
    assert matches([f'name=="{escaped}"'], {"name": value})


# ---------------------------------------------------------------------------
# field paths


def test_dotted_fieldpath_is_split_into_components() -> None:
    assert matches(["target.digest==sha256:ab"], {"target.digest": "sha256:ab"})


def test_quoted_fieldpath_component_may_contain_dots_and_slashes() -> None:
    assert matches(['labels."containerd.io/gc.root"'], {}, {"containerd.io/gc.root": "x"})


def test_label_key_is_remaining_components_joined_with_dots() -> None:
    assert matches(["labels.foo.bar==1"], {}, {"foo.bar": "1"})


def test_quoted_and_bare_label_key_components_are_joined() -> None:
    assert matches(['labels."containerd.io".foo==1'], {}, {"containerd.io.foo": "1"})


def test_quoted_fieldpath_component_with_escaped_quote_and_backslash() -> None:
    key = 'more complex label with \\ and "'
    assert matches([r'labels."more complex label with \\ and \""==present'], {}, {key: "present"})


def test_unquoted_label_key_with_slash_is_invalid_argument() -> None:
    assert invalid("labels.ns/key==value").message == (
        "filters: parse error: [labels.ns >|/|< key==value]: quoted literal not terminated"
    )


def test_fieldpath_with_trailing_dot_is_invalid_argument() -> None:
    assert invalid("labels.").message == "filters: parse error: [labels.]: expected field or quoted"


def test_fieldpath_with_leading_dot_is_invalid_argument() -> None:
    invalid(".name==a")


def test_fieldpath_with_empty_component_is_invalid_argument() -> None:
    invalid("labels..a")


def test_fieldpath_with_unexpected_character_is_invalid_argument() -> None:
    err = invalid('labels.?"x"==present')
    assert (
        err.message
        == 'filters: parse error: [labels. >|?|< "x"==present]: expected field or quoted'
    )


def test_bare_fieldpath_component_is_ascii_only() -> None:
    invalid("nämé==x")


def test_trailing_comma_is_invalid_argument() -> None:
    invalid("name==foo,")


def test_leading_comma_is_invalid_argument() -> None:
    invalid(",name==foo")


def test_double_comma_is_invalid_argument() -> None:
    invalid("name==a,,name==b")


def test_quoted_fieldpath_followed_by_bare_text_is_invalid_argument() -> None:
    invalid('labels."a"b==c')


def test_text_after_quoted_value_is_invalid_argument() -> None:
    invalid('name=="a"b')


# ---------------------------------------------------------------------------
# quoted strings: Go escapes


@pytest.mark.parametrize(
    ("literal", "decoded"),
    [
        (r"\a", "\a"),
        (r"\b", "\b"),
        (r"\f", "\f"),
        (r"\n", "\n"),
        (r"\r", "\r"),
        (r"\t", "\t"),
        (r"\v", "\v"),
        (r"\\", "\\"),
        (r"\"", '"'),
        (r"\x41", "A"),
        (r"\101", "A"),
        (r"\u00e9", "é"),
        (r"\U0001F600", "\U0001f600"),
        (r"\xc3\xa9", "é"),
        (r"\303\251", "é"),
        ("é", "é"),
    ],
)
def test_go_escape_sequences_in_double_quoted_value(literal: str, decoded: str) -> None:
    assert single_value(f'name=="<{literal}>"') == f"<{decoded}>"


def test_go_escape_sequences_in_quoted_fieldpath() -> None:
    assert matches([r'labels."a\tb\x2fc"'], {}, {"a\tb/c": "1"})


@pytest.mark.parametrize("escape", [r"\q", r"\'", r"\/", r"\|", r"\8", r"\ "])
def test_unknown_escape_in_double_quotes_is_invalid_argument(escape: str) -> None:
    assert "illegal escape sequence" in invalid(f'name=="a{escape}b"').message


@pytest.mark.parametrize("escape", [r"\x4", r"\u12", r"\U0001F60", r"\12", r"\xZZ"])
def test_short_numeric_escape_is_invalid_argument(escape: str) -> None:
    assert "illegal numeric escape sequence" in invalid(f'name=="{escape}"').message


def test_octal_escape_above_255_is_invalid_argument() -> None:
    assert "unquoting failed" in invalid(r'name=="\400"').message


def test_unicode_escape_above_max_code_point_is_invalid_argument() -> None:
    assert "unquoting failed" in invalid(r'name=="\U00110000"').message


def test_surrogate_unicode_escape_decodes_to_replacement_character() -> None:
    assert single_value(r'name=="\ud800"') == "\ufffd"


def test_byte_escape_forming_invalid_utf8_never_equals_a_real_value() -> None:
    assert not matches([r'name=="\xff"'], {"name": "\xff"})
    assert matches([r'name!="\xff"'], {"name": "\xff"})


def test_unterminated_double_quoted_value_is_invalid_argument() -> None:
    assert "quoted literal not terminated" in invalid('name=="abc').message


def test_unterminated_slash_quoted_value_is_invalid_argument() -> None:
    assert invalid("labels.key==/value").message == (
        "filters: parse error: [labels.key== >|/|< value]: quoted literal not terminated"
    )


def test_newline_inside_quoted_value_is_invalid_argument() -> None:
    assert "quoted literal not terminated" in invalid('name=="a\nb"').message


def test_backslash_at_end_of_input_is_invalid_argument() -> None:
    invalid('name=="a\\')


def test_nul_character_is_invalid_argument() -> None:
    assert "unexpected null" in invalid("name==a\x00").message
    assert "unexpected null" in invalid('name=="a\x00"').message


def test_quoted_value_may_contain_comma_and_spaces() -> None:
    assert matches(['other=="too complex, yo"'], {"other": "too complex, yo"})


# ---------------------------------------------------------------------------
# the examples of spec §7.1


def test_spec_example_name_equal() -> None:
    assert snap_matches(["name==foo"], snapshot("foo"))
    assert not snap_matches(["name==foo"], snapshot("bar"))


def test_spec_example_label_present() -> None:
    assert snap_matches(["labels.foo"], snapshot("x", labels={"foo": "1"}))
    assert not snap_matches(["labels.foo"], snapshot("x", labels={"bar": "1"}))


def test_spec_example_quoted_gc_root_label_present() -> None:
    flt = ['labels."containerd.io/gc.root"']
    assert snap_matches(
        flt, snapshot("x", labels={"containerd.io/gc.root": "2024-01-01T00:00:00Z"})
    )
    assert not snap_matches(flt, snapshot("x", labels={"containerd.io/gc.ref": "x"}))


def test_spec_example_committed_without_parent() -> None:
    flt = ['kind==committed,parent==""']
    assert snap_matches(flt, snapshot("base", kind="committed"))
    assert not snap_matches(flt, snapshot("top", parent="base", kind="committed"))
    assert not snap_matches(flt, snapshot("base", kind="active"))


def test_spec_example_snapshot_ref_label_and_quoted_parent() -> None:
    flt = ['labels."containerd.io/snapshot.ref"==sha256:abcd,parent=="default/3/sha256:0123"']
    good = snapshot(
        "default/4/x",
        parent="default/3/sha256:0123",
        labels={"containerd.io/snapshot.ref": "sha256:abcd"},
    )
    wrong_parent = snapshot(
        "default/4/x",
        parent="default/2/other",
        labels={"containerd.io/snapshot.ref": "sha256:abcd"},
    )
    assert snap_matches(flt, good)
    assert not snap_matches(flt, wrong_parent)
    assert not snap_matches(flt, snapshot("default/4/x", parent="default/3/sha256:0123"))


def test_spec_example_unquoted_regex_prefix() -> None:
    assert matches(["name~=^docker.io/library/"], {"name": "docker.io/library/busybox:latest"})
    assert not matches(["name~=^docker.io/library/"], {"name": "quay.io/docker.io/library/x"})


def test_spec_example_slash_delimited_regex() -> None:
    assert matches(["name~=/^busy.*/"], {"name": "busybox"})
    assert not matches(["name~=/^busy.*/"], {"name": "alpine"})


def test_spec_example_pipe_delimited_regex() -> None:
    assert matches(["ref~=|^layer-|"], {"ref": "layer-sha256:01"})
    assert not matches(["ref~=|^layer-|"], {"ref": "manifest-sha256:01"})


def test_spec_example_target_mediatype() -> None:
    index = "application/vnd.oci.image.index.v1+json"
    flt = [f"target.mediatype=={index}"]
    assert matches(flt, {"name": "img", "target.mediatype": index})
    assert not matches(flt, {"name": "img", "target.mediatype": index.replace("index", "manifest")})


def test_spec_example_label_not_equal_also_matches_objects_without_the_label() -> None:
    assert matches(["labels.a!=x"], {"name": "n"}, {"a": "y"})
    assert matches(["labels.a!=x"], {"name": "n"}, {"b": "x"})
    assert matches(["labels.a!=x"], {"name": "n"}, None)
    assert not matches(["labels.a!=x"], {"name": "n"}, {"a": "x"})


def test_spec_example_list_of_two_filters_matches_either_name() -> None:
    names = [n for n in ("a", "b", "c") if matches(["name==a", "name==b"], {"name": n})]
    assert names == ["a", "b"]


# ---------------------------------------------------------------------------
# containerd's own reference table (filters/filter_test.go, 1.6)

_CORPUS: list[tuple[str, str, dict[str, str]]] = [
    ("foo", "", {"foo": "true"}),
    ("bar", "", {}),
    ("foo", "", {"foo": "present", "more complex label": "present"}),
    ("bar", "", {"bar": "true"}),
    ("fooer", "", {'more complex label with \\ and "': "present"}),
    ("fooer", "", {'more complex label with \\ and ".post': "present"}),
    ("baz", "too complex, yo", {}),
    ("bazo", "abc", {}),
    ("compound", "", {"foo": "omg_asdf.asdf-qwer"}),
]


def _corpus_adaptor(name: str, other: str, labels: dict[str, str]) -> Adaptor:
    # Like containerd's test adaptor: name/other are present only when non-empty,
    # and label lookups happen even on an empty label map.
    def adapt(path: tuple[str, ...]) -> str | None:
        if path[0] == "name":
            return name or None
        if path[0] == "other":
            return other or None
        if path[0] == "labels":
            return labels.get(".".join(path[1:]))
        return None

    return adapt


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("name", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("labels.foo", [0, 2, 8]),
        ("labels.foo,name", [0, 2, 8]),
        ("labels.foo==true", [0]),
        ("labels.foo==omg_asdf.asdf-qwer", [8]),
        ("name==bar", [1, 3]),
        ("name!=bar", [0, 2, 4, 5, 6, 7, 8]),
        ("name==bar,labels.bar", [3]),
        ('other=="too complex, yo"', [6]),
        ("other~=[abc]+,name!=foo", [6, 7]),
        ("other~=/[abc]+/,name!=foo", [6, 7]),
        ("other~=/[abc]{1,2}/,name!=foo", [6, 7]),
        ('other~=/[abc]{0,1}"\\//,name!=foo', []),
        ("name==bar,labels.bar==true", [3]),
        ("name==bar,labels.bar==wrong", []),
        ('name==foo,labels."more complex label"', [2]),
        (r'labels."more complex label with \\ and \""==present', [4]),
        (r'labels."more complex label with \\ and \"".post==present', [5]),
    ],
)
def test_containerd_reference_table(text: str, expected: list[int]) -> None:
    parsed = parse([text])
    got = [i for i, entry in enumerate(_CORPUS) if parsed.match(_corpus_adaptor(*entry))]
    assert got == expected


# ---------------------------------------------------------------------------
# object_adaptor


def test_object_adaptor_returns_plain_field() -> None:
    assert object_adaptor({"name": "n"})(("name",)) == "n"


def test_object_adaptor_returns_dotted_field() -> None:
    assert object_adaptor({"target.digest": "sha256:1"})(("target", "digest")) == "sha256:1"


def test_object_adaptor_keeps_empty_field_values_present() -> None:
    assert object_adaptor({"parent": ""})(("parent",)) == ""


def test_object_adaptor_single_component_with_dot_is_not_a_nested_path() -> None:
    assert object_adaptor({"target.digest": "sha256:1"})(("target.digest",)) is None


def test_object_adaptor_unknown_field_is_absent() -> None:
    assert object_adaptor({"name": "n"})(("size",)) is None


def test_object_adaptor_field_with_extra_component_is_absent() -> None:
    assert object_adaptor({"name": "n"})(("name", "x")) is None


def test_object_adaptor_prefix_of_dotted_field_is_absent() -> None:
    assert object_adaptor({"target.digest": "d"})(("target",)) is None


def test_object_adaptor_empty_path_is_absent() -> None:
    assert object_adaptor({"name": "n"}, {"a": "b"})(()) is None


def test_object_adaptor_label_lookup() -> None:
    assert object_adaptor({}, {"a": "1"})(("labels", "a")) == "1"


def test_object_adaptor_label_key_components_joined_with_dots() -> None:
    assert object_adaptor({}, {"a.b/c": "1"})(("labels", "a", "b/c")) == "1"


def test_object_adaptor_labels_path_without_key_is_absent() -> None:
    assert object_adaptor({}, {"": "x", "a": "1"})(("labels",)) is None


def test_object_adaptor_labels_absent_when_labels_none() -> None:
    assert object_adaptor({"name": "n"})(("labels", "a")) is None


def test_object_adaptor_labels_absent_when_labels_empty() -> None:
    assert object_adaptor({"name": "n"}, {})(("labels", "a")) is None


def test_object_adaptor_annotation_lookup() -> None:
    adapt = object_adaptor({}, {"a": "label"}, {"a": "annotation"})
    assert adapt(("annotations", "a")) == "annotation"
    assert adapt(("labels", "a")) == "label"


def test_object_adaptor_annotations_absent_when_not_given() -> None:
    assert object_adaptor({}, {"a": "1"})(("annotations", "a")) is None


def test_object_adaptor_missing_label_key_is_absent() -> None:
    assert object_adaptor({}, {"a": "1"})(("labels", "b")) is None


# ---------------------------------------------------------------------------
# quote


def test_quote_escapes_like_go_strconv_quote() -> None:
    assert quote('a"b\\c') == r'"a\"b\\c"'
    assert quote("\a\b\f\n\r\t\v") == r'"\a\b\f\n\r\t\v"'
    assert quote("\x00\x1f\x7f") == r'"\x00\x1f\x7f"'
    assert quote("\xa0\u200b") == r'"\u00a0\u200b"'
    assert quote("\U000e0001") == r'"\U000e0001"'


def test_quote_keeps_printable_unicode() -> None:
    assert quote("é 世界 😀 /|,") == '"é 世界 😀 /|,"'


def test_quote_output_parses_back_as_fieldpath_component() -> None:
    key = 'containerd.io/odd "key"\twith\\stuff'
    assert matches([f"labels.{quote(key)}==1"], {}, {key: "1"})


_SAFE_FIELD = st.from_regex(r"[A-Za-z0-9_]+", fullmatch=True)


@given(field=_SAFE_FIELD, value=st.text(), other=st.text())
def test_quoted_equality_filter_round_trips(field: str, value: str, other: str) -> None:
    assume(field not in ("labels", "annotations"))
    assume(other != value)
    flt = parse([f"{field}=={quote(value)}"])
    assert flt.match(object_adaptor({field: value}))
    assert not flt.match(object_adaptor({field: other}))
