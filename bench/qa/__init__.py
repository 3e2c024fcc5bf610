"""The grounded-answer quality set: documents with distinctive facts and near-distractors, questions
with short gold answers (and ones the corpus cannot answer), and the scorer that runs them through the
real API. `make bench` scores every generator on the whole set; tests/quality runs a slice with a floor."""
