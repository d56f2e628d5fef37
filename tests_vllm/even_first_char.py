"""A reward for the eval-backend comparison: 1 when the completion's first character has an even code point. The
peaked tiny model gives it a success rate that depends on the question and the temperature."""


def even_first_char(completions, **_):
    return [float(bool(c) and ord(c[0]) % 2 == 0) for c in completions]
