# Rewrite citations of the private spec notes to the in-repo docs (issue 21, item 5).
# Usage: sed -i -E -f docs/.citations.sed FILE...   (GNU sed, extended regexps; idempotent)
# A name is rewritten only where it starts a word: not after a letter, digit, '_', '.', '/' or '-',
# so docs/protocol.md (no docs/docs/), URLs, paths such as docs/en/.../Mixup_sup.md and words such as
# analysis.ipynb are left alone.
#
# 1. The developer-machine path in mixnb/analysis/__init__.py: the doc is named just before it.
s#\(``/work/shared/spec/analysis\.md``; #(#g
# 2. Any other path into the spec folder (../shared/spec/X.md, /work/shared/spec/X.md).
s#(/work/|(\.\./)+)shared/spec/methods-more\.md#docs/methods.md#g
s#(/work/|(\.\./)+)shared/spec/(protocol|analysis|performance)\.md#docs/\3.md#g
# 3. peers.md is not carried over; its takeaway 7 (pass mean/std explicitly, 64 px is ambiguous in
#    OpenMixup) is in docs/protocol.md §2.10.
s#(^|[^A-Za-z0-9_./-])peers\.md §7([^0-9.]|\.([^0-9]|$)|$)#\1docs/protocol.md §2.10\2#g
# 4. The citations themselves.
s#(^|[^A-Za-z0-9_./-])methods-more\.md#\1docs/methods.md#g
s#(^|[^A-Za-z0-9_./-])(protocol|analysis|performance)\.md#\1docs/\2.md#g
