"""The Flower App's components: a ServerApp and a ClientApp running the lit-fed configs of the run config."""

from pathlib import Path

from lit_fed.flower.app import config_client_app, config_server_app

HERE = Path(__file__).resolve().parent

server_app = config_server_app(HERE)
client_app = config_client_app(HERE)
