-- placeholder (untracked, local only)
SELECT 1;
