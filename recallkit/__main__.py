from recallkit.cli import app

app(prog_name="recallkit")
