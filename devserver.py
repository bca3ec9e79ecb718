"""The development server: Flask's reloading server with the same settings as production.

`make dev` runs it. It listens on 127.0.0.1 at SERVER_PORT and serves HTTPS with
SSL_CONF_FULLCHAIN and SSL_CONF_PRIVKEY when SERVER_TYPE=https, as gunicorn does.
"""

from app import create_app
from database import upgrade_schema

app = create_app()
upgrade_schema(app)

if __name__ == "__main__":
    ssl_context = None
    if app.config["SERVER_TYPE"] == "https":
        ssl_context = (app.config["SSL_CONF_FULLCHAIN"], app.config["SSL_CONF_PRIVKEY"])
    app.run(host="127.0.0.1", port=app.config["SERVER_PORT"], ssl_context=ssl_context, debug=True)
