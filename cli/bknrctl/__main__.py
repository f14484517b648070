from bknrctl.main import app

app(prog_name="bknrctl")
