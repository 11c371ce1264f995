"""Tests for detect."""
