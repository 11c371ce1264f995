"""Tests of training/losses: the paper's objectives against closed forms."""
