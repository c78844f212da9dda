from __future__ import annotations

from server.runtime.textstream import TextStream


def feed(stream: TextStream, pieces: list[bytes]) -> str:
    return "".join(stream.push(p) for p in pieces) + stream.finish()


def test_plain_text_passes_through() -> None:
    assert feed(TextStream(), [b"Hel", b"lo"]) == "Hello"


def test_character_split_across_tokens_is_never_emitted_broken() -> None:
    s = TextStream()
    euro = "€".encode()
    assert s.push(euro[:1]) == ""
    assert s.push(euro[1:2]) == ""
    assert s.push(euro[2:]) == "€"


def test_stop_string_is_not_emitted_and_stops() -> None:
    s = TextStream(["STOP"])
    out = feed(s, [b"abc S", b"TO", b"P and more"])
    assert out == "abc "
    assert s.stopped


def test_partial_stop_match_is_held_then_released() -> None:
    s = TextStream(["STOP"])
    assert s.push(b"abc ST") == "abc "
    assert s.push(b"ill") == "STill"
    assert not s.stopped


def test_pending_partial_match_is_released_at_the_end() -> None:
    s = TextStream(["</end>"])
    assert s.push(b"x </e") == "x "
    assert s.finish() == "</e"


def test_earliest_of_several_stops_wins() -> None:
    s = TextStream(["bb", "a"])
    assert feed(s, [b"xxbba"]) == "xx"


def test_the_matched_stop_string_is_reported() -> None:
    s = TextStream(["zz", "bb", "a"])
    assert feed(s, [b"xx", b"b", b"ba"]) == "xx"
    assert s.matched == "bb"


def test_at_the_same_place_the_first_listed_stop_is_reported() -> None:
    s = TextStream(["abc", "ab"])
    assert feed(s, [b"-abc"]) == "-"
    assert s.matched == "abc"


def test_no_stop_string_matched_reports_none() -> None:
    s = TextStream(["STOP"])
    feed(s, [b"abc ST"])
    assert s.matched is None and not s.stopped
