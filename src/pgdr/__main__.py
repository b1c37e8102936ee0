from pgdr.cli.entry import run

run()
