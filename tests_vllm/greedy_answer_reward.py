"""A reward for the eval-backend comparison: 1 when the completion starts with the row's `answer` (the model's own
greedy first character, written by the case), so the success rate falls as the temperature rises."""


def starts_with_answer(completions, answer, **_):
    return [float(c.startswith(a)) for c, a in zip(completions, answer)]
