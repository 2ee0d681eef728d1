"""The simulated detector: frame physics with known ground truth, wire-format senders, fault injection.

It speaks the same wire formats as a real detector; the appliance cannot tell it apart.
"""
