"""personsd: receives partners' .persons files over SFTP and imports them."""

__version__ = "0.1.0"
