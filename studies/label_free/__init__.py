"""The label-free fovea study (issue 21): arms, the planner's gradient share of each loss, the results table."""
