"""The SQL history store (SQLAlchemy models, statements, migrations) and the files of uploads and artifacts."""
