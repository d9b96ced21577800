"""Answer checking: the last \\boxed{} of a response against the gold answer, with math-verify."""

import threading

import pytest

from t3s_nemo.trajectory.verify import extract_boxed, is_correct


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"The result is \boxed{42}.", "42"),
        (r"so \boxed{\frac{1}{2}} in the end", r"\frac{1}{2}"),
        (r"\boxed{x^{2}+\sqrt{y_{1}}}", r"x^{2}+\sqrt{y_{1}}"),
        (r"first \boxed{1}, then corrected: \boxed{2}", "2"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\fbox{7}", "7"),
        (r"\boxed 5.", "5"),
        (r"\boxed{ 3 }", "3"),
        ("The answer is 42.", None),
        ("", None),
        # the last box is cut off (max_new_tokens): no answer, not the earlier box
        (r"\boxed{3} and then \boxed{\frac{4", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "response, gold",
    [
        (r"The result is \boxed{50}.", "50"),
        (r"\boxed{10.0}", "10"),
        (r"\boxed{0.5}", "1/2"),
        (r"\boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{\dfrac{3}{4}}", "0.75"),
        (r"\boxed{1.5}", r"\frac{3}{2}"),
        (r"\boxed{-7}", "-7"),
        (r"\boxed{1,000}", "1000"),
        (r"\boxed{\frac{\sqrt3}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{\sqrt{9}}", "3"),
        (r"\boxed{1+x}", "x+1"),
        (r"\boxed{\{2, 1\}}", r"\{1,2\}"),
        (r"<think>2+2=4</think> So \boxed{4}", "$4$"),
        (r"\boxed{4}", r"\boxed{4}"),
        (r"\boxed{x=2}", "2"),
        (r"\boxed{\text{(B)}}", "B"),
    ],
)
def test_equivalent_answers_are_correct(response, gold):
    assert is_correct(response, gold)


@pytest.mark.parametrize(
    "response, gold",
    [
        (r"\boxed{51}", "50"),
        (r"\boxed{7}", "-7"),
        (r"\boxed{0.6}", "1/2"),
        (r"\boxed{\pi}", "3.14159"),
        (r"\boxed{(2, 1)}", "(1,2)"),
        ("The result is 50.", "50"),  # right number, but no \boxed{}
        (r"\boxed{}", "50"),
        (r"\boxed{50", "50"),  # unclosed
        (r"\boxed{50} but wait, \boxed{49}", "50"),  # the last box counts
        # the answer is what follows the reasoning, not a box inside it
        ("<think>\nmaybe \\boxed{50}\n</think>\n\nThe answer is \\boxed{49}.", "50"),
        ("<think>\nmaybe \\boxed{50}\n</think>\n\nI am not sure.", "50"),
    ],
)
def test_wrong_or_missing_answers_are_wrong(response, gold):
    assert not is_correct(response, gold)


def test_is_correct_works_outside_the_main_thread():
    # math-verify's timeouts use SIGALRM, which raises in other threads; they are switched off there
    out = {}
    t = threading.Thread(target=lambda: out.update(ok=is_correct(r"\boxed{\frac{1}{2}}", "0.5"),
                                                   bad=is_correct(r"\boxed{3}", "0.5")))
    t.start()
    t.join()
    assert out == {"ok": True, "bad": False}


@pytest.mark.parametrize("response", [
    "<think>\nfirst try \\boxed{49}\n</think>\n\nThe result is \\boxed{50}.",
    "the prompt opened the think block\n</think>\n\\boxed{50}",  # QwQ-style prompts end with <think>
    "no reasoning tags: \\boxed{50}",
    # no </think>: read whole, the last box counts (the paper's protocol)
    "<think>\nso it is \\boxed{50}",
])
def test_the_answer_after_the_reasoning_counts(response):
    assert is_correct(response, "50")
