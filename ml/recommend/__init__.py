"""Recommendations: candidate generation, a learned ranker, business rules, evaluation."""
