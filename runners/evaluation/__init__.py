"""`evaluate`: one prediction per problem and micro accuracy, for solve and sample jobs alike."""
