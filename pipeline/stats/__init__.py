"""Dataset statistics over a build's index and manifest (compute) and the HTML report with its figures
(report).
"""
