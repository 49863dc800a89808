"""Tests for alad.alignment.pairing: pairing tokens through character offsets, splitting texts."""

from __future__ import annotations

import pytest
import torch

from alad.alignment.pairing import (
    SpanTable,
    TokenSpans,
    is_pair_corpus,
    pair_tokens,
    segment_texts,
    span_lengths,
    split_to_fit,
    teacher_targets,
    tokenize_with_spans,
)


def spans(offsets: list[tuple[int, int]], special: list[int] | None = None) -> TokenSpans:
    special = special or [0] * len(offsets)
    return TokenSpans(
        input_ids=list(range(len(offsets))),
        offsets=torch.tensor(offsets, dtype=torch.long).reshape(-1, 2),
        special=torch.tensor(special, dtype=torch.bool),
    )


# text: "playing football" ; student: [CLS] play ##ing foot ##ball [SEP]
STUDENT = spans([(0, 0), (0, 4), (4, 7), (8, 12), (12, 16), (0, 0)], [1, 0, 0, 0, 0, 1])
# teacher: <s> playing Ġfoo tball </s>  ("playing" covers two student pieces; "foot" spans two teacher pieces)
TEACHER = spans([(0, 0), (0, 7), (8, 11), (11, 16), (0, 0)], [1, 0, 0, 0, 1])
TEACHER_STATES = torch.tensor([[100.0, 100.0], [1.0, 2.0], [3.0, 5.0], [7.0, 11.0], [-100.0, -100.0]])


def test_pair_tokens_by_character_overlap():
    pooling, mask = pair_tokens(STUDENT, TEACHER)
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],  # [CLS]: special, never paired (not even with <s>)
            [0.0, 1.0, 0.0, 0.0, 0.0],  # play  <- playing
            [0.0, 1.0, 0.0, 0.0, 0.0],  # ##ing <- playing
            [0.0, 0.0, 0.5, 0.5, 0.0],  # foot  <- mean(Ġfoo, tball)
            [0.0, 0.0, 0.0, 1.0, 0.0],  # ##ball <- tball
            [0.0, 0.0, 0.0, 0.0, 0.0],  # [SEP]
        ]
    )
    assert torch.equal(pooling, expected)
    assert mask.tolist() == [False, True, True, True, True, False]


def test_teacher_targets_are_means_of_overlapping_rows():
    targets, mask = teacher_targets(STUDENT, TEACHER, TEACHER_STATES)
    expected = torch.tensor([[0.0, 0.0], [1.0, 2.0], [1.0, 2.0], [5.0, 8.0], [7.0, 11.0], [0.0, 0.0]])
    assert torch.equal(targets, expected)
    assert mask.tolist() == [False, True, True, True, True, False]


def test_teacher_targets_accept_float16_and_check_row_count():
    targets, _ = teacher_targets(STUDENT, TEACHER, TEACHER_STATES.half())
    assert targets.dtype == torch.float32
    assert targets[3].tolist() == [5.0, 8.0]
    with pytest.raises(ValueError, match="teacher states have 4 rows but the teacher tokenisation has 5 tokens"):
        teacher_targets(STUDENT, TEACHER, TEACHER_STATES[:4])


def test_empty_spans_and_unmatched_tokens_are_excluded():
    # text "ab  cd": student "ab", an empty-span token, "cd" (4-6), and "x" at 7-8 that no teacher token covers
    student = spans([(0, 2), (3, 3), (4, 6), (7, 8)])
    # teacher: "ab", an empty token at 3 (would overlap nothing anyway), a special with a real-looking span, "cd"
    teacher = spans([(0, 2), (3, 3), (7, 8), (4, 6)], [0, 0, 1, 0])
    states = torch.tensor([[1.0], [50.0], [60.0], [4.0]])
    pooling, mask = pair_tokens(student, teacher)
    assert mask.tolist() == [True, False, True, False]
    assert pooling[1].sum() == 0 and pooling[3].sum() == 0
    assert pooling[:, 1].sum() == 0 and pooling[:, 2].sum() == 0  # empty and special teacher tokens unused
    targets, _ = teacher_targets(student, teacher, states)
    assert targets.squeeze(1).tolist() == [1.0, 0.0, 4.0, 0.0]


def test_pairable():
    s = spans([(0, 0), (0, 3), (3, 3), (4, 5)], [1, 0, 0, 0])
    assert s.pairable.tolist() == [False, True, False, True]


def test_tokenize_with_spans(bert, sentences):
    result = tokenize_with_spans(bert.tokenizer, sentences[:3])
    assert len(result) == 3
    for text, s in zip(sentences[:3], result, strict=True):
        assert s.input_ids == bert.tokenizer(text)["input_ids"]
        assert s.offsets.shape == (len(s.input_ids), 2) and s.offsets.dtype == torch.long
        assert s.special.tolist() == [True] + [False] * (len(s.input_ids) - 2) + [True]


def test_identical_tokenizers_pair_as_identity(bert, sentences):
    for s in tokenize_with_spans(bert.tokenizer, sentences[:5]):
        pooling, mask = pair_tokens(s, s)
        assert torch.equal(mask, s.pairable)
        expected = torch.diag(s.pairable.float())
        assert torch.equal(pooling, expected)


def _expected_targets(student: TokenSpans, teacher: TokenSpans, states: torch.Tensor):
    """Reference implementation with plain loops."""
    targets = torch.zeros(len(student.input_ids), states.shape[1])
    mask = []
    for i, ((s0, s1), s_special) in enumerate(zip(student.offsets.tolist(), student.special.tolist(), strict=True)):
        rows = [
            j
            for j, ((t0, t1), t_special) in enumerate(
                zip(teacher.offsets.tolist(), teacher.special.tolist(), strict=True)
            )
            if not s_special and not t_special and s1 > s0 and t1 > t0 and max(s0, t0) < min(s1, t1)
        ]
        mask.append(bool(rows))
        if rows:
            targets[i] = states[rows].mean(dim=0)
    return targets, mask


def test_cross_family_pairing(bert, roberta, sentences):
    texts = sentences + ["Playing football at the  café, people reads."]
    student_spans = tokenize_with_spans(bert.tokenizer, texts)
    teacher_spans = tokenize_with_spans(roberta.tokenizer, texts)
    generator = torch.Generator().manual_seed(0)
    several_pieces = 0
    for text, s, t in zip(texts, student_spans, teacher_spans, strict=True):
        assert s.input_ids[0] == bert.tokenizer.cls_token_id and t.input_ids[0] == roberta.tokenizer.bos_token_id
        states = torch.randn(len(t.input_ids), 4, generator=generator)
        targets, mask = teacher_targets(s, t, states)
        expected, expected_mask = _expected_targets(s, t, states)
        assert mask.tolist() == expected_mask
        torch.testing.assert_close(targets, expected, rtol=0, atol=1e-6)
        # the byte-level BPE teacher covers every non-space character, so every real student token gets a target
        assert torch.equal(mask, s.pairable)
        assert not mask[s.special].any()
        assert s.special.sum() == 2 and t.special.sum() == 2
        pooling, _ = pair_tokens(s, t)
        several_pieces += int((pooling > 0).sum(dim=1).gt(1).sum())
        for i in torch.nonzero(mask).flatten().tolist():
            start, end = s.offsets[i].tolist()
            assert text[start:end].strip() == text[start:end] != ""
    assert several_pieces > 0  # the two tokenizers really do split some words differently


def test_split_to_fit_at_whitespace():
    assert split_to_fit("aaaa bbbb cccc dddd", lambda s: len(s) <= 9) == ["aaaa bbbb", "cccc dddd"]
    assert split_to_fit("short", lambda s: len(s) <= 5) == ["short"]
    assert split_to_fit("abcdefgh", lambda s: len(s) <= 2) == ["ab", "cd", "ef", "gh"]  # no whitespace: cut inside


def test_split_to_fit_gives_up_on_a_single_character():
    with pytest.raises(ValueError, match="cannot split 'a' into pieces the models accept"):
        split_to_fit("abc", lambda s: False)


def _check_pieces_cover(text: str, pieces: list[str]) -> None:
    """Pieces appear in order in ``text``; what lies between them (and around them) is whitespace only."""
    position = 0
    for index, piece in enumerate(pieces):
        found = text.index(piece, position)
        gap = text[position:found]
        assert gap.strip() == "", f"characters lost before piece {index}: {gap!r}"
        if index > 0:
            assert gap != "", "two pieces split inside a word"
        position = found + len(piece)
    assert text[position:].strip() == ""


def test_segment_texts_splits_long_texts_to_fit_both_tokenizers(bert, roberta, sentences):
    long_text = "  " + " ".join(sentences[:20]) + " "
    limits = [(bert.tokenizer, bert.max_length), (roberta.tokenizer, roberta.max_length)]
    assert len(bert.tokenizer(long_text)["input_ids"]) > 3 * bert.max_length
    segments = segment_texts([long_text, sentences[0]], limits)
    assert segments[-1] == sentences[0]
    pieces = segments[:-1]
    assert len(pieces) >= 4
    for piece in pieces:
        assert piece == piece.strip() and piece
        assert len(bert.tokenizer(piece)["input_ids"]) <= bert.max_length
        assert len(roberta.tokenizer(piece)["input_ids"]) <= roberta.max_length
    _check_pieces_cover(long_text, pieces)
    assert "".join(pieces).replace(" ", "") == long_text.replace(" ", "")


def test_segment_texts_drops_blanks_and_strips(bert):
    limits = [(bert.tokenizer, bert.max_length)]
    assert segment_texts(["", "   ", "\n\t", "  a cat sat  ", "the dog"], limits) == ["a cat sat", "the dog"]
    assert segment_texts([], limits) == []


def test_segment_texts_uses_the_tokenizer_count_not_only_characters(bert):
    # 20 words of one character each: 40 characters, but 22 tokens with [CLS]/[SEP]; limit 12 forces a split
    text = " ".join(["a"] * 20)
    pieces = segment_texts([text], [(bert.tokenizer, 12)])
    assert all(len(bert.tokenizer(p)["input_ids"]) <= 12 for p in pieces)
    assert len(pieces) >= 2 and " ".join(pieces) == text


# --------------------------------------------------------------------------------------------------
# text pairs (QA: question, context)

PAIRS = [
    ("Who sat on the mat?", "A cat sat on the mat in the morning."),
    ("Where is the house?", "The red house stands by the green river."),
]


def test_pairs_share_one_character_space(bert, roberta):
    student = tokenize_with_spans(bert.tokenizer, PAIRS)
    teacher = tokenize_with_spans(roberta.tokenizer, PAIRS)
    for (first, second), s, t in zip(PAIRS, student, teacher, strict=True):
        # the ids are those of the tokenizer's own pair encoding, separators included
        assert s.input_ids == bert.tokenizer(first, second)["input_ids"]
        assert t.input_ids == roberta.tokenizer(first, second)["input_ids"]
        joint = first + "\n" + second
        seq_ids = bert.tokenizer(first, second).sequence_ids()
        for (start, end), sid, special in zip(s.offsets.tolist(), seq_ids, s.special.tolist(), strict=True):
            if special:
                continue
            piece = joint[start:end]
            assert piece.lower().replace(" ", "") in (first if sid == 0 else second).lower()
            assert (end <= len(first)) == (sid == 0)  # second-sequence tokens sit after the gap
        pooling, mask = pair_tokens(s, t)
        assert torch.equal(mask, s.pairable)
        # no student token is paired with a teacher token of the other sequence
        s_first = (s.offsets[:, 1] <= len(first)).float()
        t_first = (t.offsets[:, 1] <= len(first)).float()
        assert torch.equal(((pooling > 0).float() @ (1 - t_first)) * s_first, torch.zeros(len(s_first)))
        assert torch.equal(((pooling > 0).float() @ t_first) * (1 - s_first), torch.zeros(len(s_first)))


def test_segment_texts_splits_a_pair_in_its_second_text(bert, roberta, sentences):
    question, context = "Who sat on the mat?", " ".join(sentences[:20])
    limits = [(bert.tokenizer, bert.max_length), (roberta.tokenizer, roberta.max_length)]
    segments = segment_texts([(question, context), (" a question ", " short ")], limits)
    assert segments[-1] == ("a question", "short")
    pieces = segments[:-1]
    assert len(pieces) >= 4 and all(first == question for first, _ in pieces)
    for first, piece in pieces:
        assert len(bert.tokenizer(first, piece)["input_ids"]) <= bert.max_length
        assert len(roberta.tokenizer(first, piece)["input_ids"]) <= roberta.max_length
    _check_pieces_cover(context, [piece for _, piece in pieces])
    assert segment_texts([("", "context"), ("question", "  ")], limits) == []


def test_pair_with_an_over_long_first_text_is_refused(bert):
    question = " ".join(["cat"] * 70)
    with pytest.raises(ValueError, match="first text of a pair is too long .* even alone"):
        segment_texts([(question, "a dog sat on the mat")], [(bert.tokenizer, bert.max_length)])


def test_mixed_or_malformed_pairs_are_refused(bert):
    assert is_pair_corpus(PAIRS) and not is_pair_corpus(["a cat"]) and not is_pair_corpus([])
    with pytest.raises(ValueError, match="mix plain strings and .* pairs"):
        tokenize_with_spans(bert.tokenizer, ["a cat", ("a", "dog")])
    with pytest.raises(ValueError, match="tuple of two strings"):
        tokenize_with_spans(bert.tokenizer, [("a", "dog", "cat")])


def test_special_tokens_pair_by_role_only_when_asked(bert, roberta):
    for texts in (["a cat sat"], PAIRS[:1]):
        [s] = tokenize_with_spans(bert.tokenizer, texts)
        [t] = tokenize_with_spans(roberta.tokenizer, texts)
        s_ids = bert.tokenizer.convert_ids_to_tokens(s.input_ids)
        t_ids = roberta.tokenizer.convert_ids_to_tokens(t.input_ids)
        roles_s, roles_t = s.special_roles.tolist(), t.special_roles.tolist()
        # role 0 = the opening special, 1 = separators between the two texts, 2 = the closing special
        assert [(tok, r) for tok, r in zip(s_ids, roles_s, strict=True) if r >= 0] == (
            [("[CLS]", 0), ("[SEP]", 2)] if isinstance(texts[0], str) else [("[CLS]", 0), ("[SEP]", 1), ("[SEP]", 2)]
        )
        assert [(tok, r) for tok, r in zip(t_ids, roles_t, strict=True) if r >= 0] == (
            [("<s>", 0), ("</s>", 2)]
            if isinstance(texts[0], str)
            else [("<s>", 0), ("</s>", 1), ("</s>", 1), ("</s>", 2)]
        )
        states = torch.randn(len(t.input_ids), 3)
        plain, plain_mask = teacher_targets(s, t, states)
        paired, paired_mask = teacher_targets(s, t, states, specials=True)
        assert not plain_mask[s.special].any() and paired_mask.all()
        assert torch.equal(paired[~s.special], plain[~s.special])  # text tokens are paired as before
        for i in torch.nonzero(s.special).flatten().tolist():
            same_role = [j for j, r in enumerate(roles_t) if r == roles_s[i]]
            torch.testing.assert_close(paired[i], states[same_role].mean(dim=0))


def test_span_table_holds_a_corpus_in_flat_arrays(bert, roberta, sentences):
    """tokenize_with_spans returns a SpanTable: per text the same spans as tokenising it alone, a
    few bytes per token (not Python objects per text), slices that share the arrays."""
    texts = sentences * 3
    for model in (bert, roberta):
        table = tokenize_with_spans(model.tokenizer, texts)
        assert isinstance(table, SpanTable) and len(table) == len(texts)
        assert table.lengths() == [len(s.input_ids) for s in table]
        for index in (0, 7, len(texts) - 1):
            alone = model.tokenizer(texts[index], return_offsets_mapping=True, return_special_tokens_mask=True)
            got = table[index]
            assert got.input_ids == alone["input_ids"]
            assert got.offsets.tolist() == [list(o) for o in alone["offset_mapping"]]
            assert got.special.tolist() == [bool(x) for x in alone["special_tokens_mask"]]
            assert got.offsets.dtype == torch.long and table[index - len(texts)].input_ids == got.input_ids
        tokens = sum(table.lengths())
        assert table.nbytes <= 13 * tokens + 8 * (len(texts) + 1)  # int32 id + 2 x int32 offsets + bool flag
        part = table[5:9]
        assert isinstance(part, SpanTable) and part.ids is table.ids  # a view, no copy
        assert [s.input_ids for s in part] == [table[i].input_ids for i in range(5, 9)]
        assert part.flat_ids() == [i for s in part for i in s.input_ids]
        assert len(table[9:5]) == 0 and span_lengths(list(part)) == part.lengths()
        with pytest.raises(IndexError, match="not in this table"):
            table[len(texts)]
    # chunked tokenisation gives the same table as one chunk
    halves = [tokenize_with_spans(bert.tokenizer, texts[:10]), tokenize_with_spans(bert.tokenizer, texts[10:])]
    merged = SpanTable.concat(halves)
    whole = tokenize_with_spans(bert.tokenizer, texts)
    assert merged.lengths() == whole.lengths() and merged.flat_ids() == whole.flat_ids()
    assert (merged.offsets == whole.offsets).all() and (merged.special == whole.special).all()
