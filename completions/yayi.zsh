#compdef yayi

_yayi_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _YAYI_COMPLETE=complete_zsh yayi)
}

compdef _yayi_completion yayi
