"""Tests for evaluate."""
