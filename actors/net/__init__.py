"""Every connection a tool makes: the URL guard (`guard`), the guarded httpx client (`client`)
and the guarded proxy that libraries fetching for a tool (yt-dlp, OpenCV) go through (`proxy`)."""
