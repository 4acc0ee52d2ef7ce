"""The orders example: order placed → reserve stock → charge → ship, as aggregates and a saga."""
