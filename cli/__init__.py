"""The `t2serve` command line: offline commands (fit, predict, plan, plot, replay) and `serve`.

It lives outside server/ so that the offline commands never import the web stack or vLLM:
`t2serve fit` loads numpy and scipy only, and `serve` imports the server when it runs.
"""
