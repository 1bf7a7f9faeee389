"""Reference solutions. Try the exercises in labs/exercises/ first."""
